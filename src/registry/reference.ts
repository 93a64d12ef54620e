/**
 * Image references moved to src/ref/reference.ts (names are not transport: the OCI layer needs them too, as
 * go-containerregistry's `name` package is separate from `remote`). Re-exported here for existing imports.
 */
export * from '../ref/reference.js';
