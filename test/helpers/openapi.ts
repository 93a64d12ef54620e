/** Loads src/service/api/openapi.yaml and validates values against its component schemas (JSON Schema 2020-12). */
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Ajv2020 } from 'ajv/dist/2020.js';
import { parse } from 'yaml';

export const OPENAPI_FILE = join(
  dirname(fileURLToPath(import.meta.url)),
  '..',
  '..',
  'src',
  'service',
  'api',
  'openapi.yaml',
);

/** The parsed document (YAML anchors expanded). */
export function loadOpenApi(): Record<string, unknown> {
  return parse(readFileSync(OPENAPI_FILE, 'utf8')) as Record<string, unknown>;
}

let ajv: Ajv2020 | undefined;

/** Throws (with Ajv's errors) unless `value` matches `#/components/schemas/<name>`. */
export function assertSchema(name: string, value: unknown): void {
  if (!ajv) {
    // strict: false — the document has OpenAPI keywords Ajv does not know; formats are annotations here.
    ajv = new Ajv2020({ strict: false, validateFormats: false, allErrors: true });
    ajv.addSchema({ ...loadOpenApi(), $id: 'kiln-openapi' });
  }
  const validate = ajv.getSchema(`kiln-openapi#/components/schemas/${name}`);
  if (!validate) throw new Error(`openapi.yaml has no schema ${name}`);
  if (!validate(value)) {
    throw new Error(`not a ${name}: ${ajv.errorsText(validate.errors)}\n${JSON.stringify(value)}`);
  }
}
