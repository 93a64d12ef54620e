/**
 * The rootless RUN sandbox and snapshotters. See userns.ts (build user namespace), overlay.ts / copy.ts
 * (snapshotters), run.ts (RUN processes) and user.ts (USER resolution).
 */
export {
  userNamespaceStatus,
  assertRootlessSupported,
  enterBuildNamespace,
  runInBuildNamespace,
  BUILD_NS_ENV,
  type UserNamespaceStatus,
  type RunInNamespaceOptions,
} from './userns.js';
export {
  OverlaySnapshotter,
  chooseSnapshotter,
  overlaySupported,
  mountOverlay,
  type SandboxSnapshot,
  type SandboxSnapshotter,
  type SnapshotterOptions,
} from './overlay.js';
export { CopySnapshotter } from './copy.js';
export {
  runProcess,
  NamespaceExecutor,
  DEFAULT_PATH,
  DEFAULT_HOSTNAME,
  type RunProcessOptions,
  type RunProcessResult,
  type SandboxMount,
} from './run.js';
export { resolveExecUser, type ExecUser } from './user.js';
export { mount, unmount, mountTable, mountsUnder } from './mount.js';
export { defaultKilnHome } from './paths.js';
