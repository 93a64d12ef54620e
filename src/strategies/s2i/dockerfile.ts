/**
 * The Dockerfile `s2i build --as-dockerfile` writes (openshift/source-to-image pkg/build/strategies/dockerfile,
 * v1.5+ — `COPY --chown=USER:0`), generated from an S2I plan. kiln's S2I frontend parses exactly this text into the
 * engine's typed instructions, so the image equals what BuildKit builds from s2i's own output; the differential
 * tests build the same text with BuildKit. Pure: no I/O.
 *
 * What kiln adds (never in s2i's text, off unless asked for): a `cached` stage fed from kiln's artifacts cache
 * instead of the previous image, `RUN --mount=type=cache` on `assemble` for `--cache-dir`, and a runtime stage
 * (s2i's extended builds, which `--as-dockerfile` does not support).
 */
import { posix } from 'node:path';

/** One environment entry in `.s2i/environment` / `--env` order. */
export interface EnvEntry {
  name: string;
  value: string;
}

/** A runtime artifact mapping: an absolute source in the assembled image, a relative destination dir. */
export interface RuntimeArtifact {
  source: string;
  destination: string;
}

export interface S2IDockerfilePlan {
  builderImage: string;
  /** The assemble user as given (name or uid; `root` skips USER). */
  assembleUser: string;
  /** `io.openshift.s2i.destination` (default /tmp). */
  destination: string;
  /** Where the builder image keeps its scripts when the upload does not provide them (an image path). */
  imageScriptsDir: string;
  /** Scripts present in `upload/scripts` (from `--scripts-url file://` or `.s2i/bin`). */
  providedScripts: ReadonlySet<string>;
  /** Output labels (sorted by name when written; s2i writes them in Go's random map order). */
  labels: Record<string, string>;
  /** `.s2i/environment`, then `--env`. */
  env: EnvEntry[];
  /**
   * Incremental: `previous` pulls the previous image and runs its save-artifacts (s2i's form); `cached` takes
   * `upload/artifacts.tar` (kiln's artifacts cache) through a scratch stage of the same name.
   */
  incremental?: { kind: 'previous'; image: string } | { kind: 'cached' };
  /** Persistent cache mounts for `assemble` (kiln's `--cache-dir`). */
  cacheDirs?: { target: string; id: string; uid?: number }[];
  /** Extended build: the runtime image stage. */
  runtime?: {
    image: string;
    user: string;
    /** WORKDIR of the runtime image (artifact destinations are relative to it). */
    workdir: string;
    scriptsDir: string;
    /** Scripts provided in `upload/scripts` that the runtime stage uses (`assemble-runtime`, `run`). */
    providedScripts: ReadonlySet<string>;
    artifacts: RuntimeArtifact[];
  };
}

/** Where the incremental artifacts tar lives in the image while building (s2i: defaultDestination + artifacts.tar). */
export const ARTIFACTS_TAR = '/tmp/artifacts.tar';

/** s2i's `sanitize`: a newline in a value would end the instruction. */
function sanitize(s: string): string {
  return s.replace(/\n/g, '\\n');
}

/** Go's `%q` (strconv.Quote) for the label keys and values. */
export function goQuote(s: string): string {
  let out = '"';
  for (const ch of s) {
    const c = ch.codePointAt(0) as number;
    if (ch === '"' || ch === '\\') out += '\\' + ch;
    else if (ch === '\n') out += '\\n';
    else if (ch === '\t') out += '\\t';
    else if (ch === '\r') out += '\\r';
    else if (ch === '\x07') out += '\\a';
    else if (ch === '\b') out += '\\b';
    else if (ch === '\f') out += '\\f';
    else if (ch === '\v') out += '\\v';
    else if (c < 0x20 || c === 0x7f) out += '\\x' + c.toString(16).padStart(2, '0');
    else if (c >= 0x80 && c < 0xa0) out += '\\u' + c.toString(16).padStart(4, '0');
    else out += ch;
  }
  return out + '"';
}

/** s2i's ConvertEnvironmentToDocker: `ENV A="x" \` … with `$`, `"` and `\` escaped; a lone newline when empty. */
export function envInstruction(env: EnvEntry[]): string {
  const esc = (v: string): string => v.replace(/[$"\\]/g, (m) => '\\' + m);
  let out = '';
  env.forEach((e, i) => {
    out += i === 0 ? `ENV ${e.name}="${esc(e.value)}"` : ` \\\n    ${e.name}="${esc(e.value)}"`;
  });
  return out + '\n';
}

function labelInstruction(labels: Record<string, string>): string {
  const keys = Object.keys(labels).sort();
  if (keys.length === 0) return '';
  return 'LABEL ' + keys.map((k) => `${goQuote(k)}=${goQuote(labels[k] as string)}`).join(' \\\n      ') + '\n';
}

function cacheMounts(plan: S2IDockerfilePlan): string {
  return (plan.cacheDirs ?? [])
    .map((c) => {
      let m = `--mount=type=cache,id=${c.id},target=${c.target}`;
      if (c.uid !== undefined) m += `,uid=${c.uid},gid=0`;
      else m += ',mode=0777';
      return m + ' ';
    })
    .join('');
}

/** The Dockerfile for `plan` (the build context holds `upload/scripts`, `upload/src` and, cached, the tar). */
export function s2iDockerfile(plan: S2IDockerfilePlan): string {
  const user = sanitize(plan.assembleUser);
  const scriptsDestDir = posix.join(plan.destination, 'scripts');
  const sourceDestDir = posix.join(plan.destination, 'src');
  const artifactsDestDir = posix.join(plan.destination, 'artifacts');
  const provided = plan.providedScripts;
  const switchUser = user.length > 0 && user !== 'root';
  let b = '';
  const inc = plan.incremental;
  if (inc?.kind === 'previous') {
    b += `FROM ${inc.image} as cached\n`;
    let artifactsScript: string;
    if (provided.has('save-artifacts')) {
      b += '# Copying in override save-artifacts script\n';
      artifactsScript = sanitize(posix.join(scriptsDestDir, 'save-artifacts'));
      b += `COPY --chown=${user}:0 ${sanitize('upload/scripts/save-artifacts')} ${artifactsScript}\n`;
    } else {
      b += '# Save-artifacts script sourced from builder image based on user input or image metadata.\n';
      artifactsScript = sanitize(posix.join(plan.imageScriptsDir, 'save-artifacts'));
    }
    if (switchUser) b += `USER ${user}\n`;
    b += `RUN if [ -s ${artifactsScript} ]; then ${artifactsScript} > ${ARTIFACTS_TAR}; else touch ${ARTIFACTS_TAR}; fi\n`;
  } else if (inc?.kind === 'cached') {
    // kiln: the artifacts tar saved after the last build of this image name, instead of the previous image
    b += 'FROM scratch as cached\n';
    b += `COPY upload/artifacts.tar ${ARTIFACTS_TAR}\n`;
  }
  b += `FROM ${plan.builderImage}\n`;
  b += labelInstruction(plan.labels);
  b += envInstruction(plan.env);
  if (inc) b += `COPY --chown=${user}:0 --from=cached ${ARTIFACTS_TAR} ${ARTIFACTS_TAR}\n`;
  if (provided.size > 0) {
    b += '# Copying in override assemble/run scripts\n';
    b += `COPY --chown=${user}:0 upload/scripts ${sanitize(scriptsDestDir)}\n`;
  }
  b += '# Copying in source code\n';
  b += `COPY --chown=${user}:0 upload/src ${sanitize(sourceDestDir)}\n`;
  if (switchUser) b += `USER ${user}\n`;
  if (inc) {
    b += '# Extract artifact content\n';
    b += `RUN if [ -s ${ARTIFACTS_TAR} ]; then mkdir -p ${sanitize(artifactsDestDir)}; tar -xf ${ARTIFACTS_TAR} -C ${sanitize(artifactsDestDir)}; fi && \\\n`;
    b += `    rm ${ARTIFACTS_TAR}\n`;
  }
  if (provided.has('assemble')) {
    b += `RUN ${cacheMounts(plan)}${sanitize(posix.join(scriptsDestDir, 'assemble'))}\n`;
  } else {
    b += '# Assemble script sourced from builder image based on user input or image metadata.\n';
    b += '# If this file does not exist in the image, the build will fail.\n';
    b += `RUN ${cacheMounts(plan)}${sanitize(posix.join(plan.imageScriptsDir, 'assemble'))}\n`;
  }
  const rt = plan.runtime;
  if (!rt) {
    if (provided.has('run')) b += `CMD ${sanitize(posix.join(scriptsDestDir, 'run'))}\n`;
    else {
      b += '# Run script sourced from builder image based on user input or image metadata.\n';
      b += '# If this file does not exist in the image, the build will fail.\n';
      b += `CMD ${sanitize(posix.join(plan.imageScriptsDir, 'run'))}\n`;
    }
    return b;
  }
  // kiln: the extended build's runtime stage (s2i docs/runtime_image.md). Artifact layers are COPY --link with a
  // numeric or no owner, so they do not depend on the runtime image (rebasable).
  const ruser = sanitize(rt.user);
  const chown = /^\d+(:\d+)?$/.test(ruser) ? `--chown=${ruser.includes(':') ? ruser : `${ruser}:0`} ` : '';
  b += `FROM ${rt.image}\n`;
  b += labelInstruction(plan.labels);
  b += envInstruction(plan.env);
  if (rt.providedScripts.size > 0) {
    b += '# Copying in override assemble-runtime/run scripts\n';
    b += `COPY --link ${chown}upload/scripts ${sanitize(scriptsDestDir)}\n`;
  }
  b += '# Copying in the runtime artifacts of the assembled image\n';
  for (const a of rt.artifacts) {
    const dest = posix.join(rt.workdir, a.destination) + '/';
    b += `COPY --link ${chown}--from=0 ${sanitize(a.source)} ${sanitize(dest)}\n`;
  }
  if (ruser.length > 0 && ruser !== 'root') b += `USER ${ruser}\n`;
  const script = (name: string): string =>
    sanitize(rt.providedScripts.has(name) ? posix.join(scriptsDestDir, name) : posix.join(rt.scriptsDir, name));
  b += `RUN ${script('assemble-runtime')}\n`;
  b += `CMD ${script('run')}\n`;
  return b;
}
