import { test } from 'node:test';
import assert from 'node:assert/strict';
import { envInstruction, goQuote, s2iDockerfile, type S2IDockerfilePlan } from './dockerfile.js';
import { parseDockerfile } from '../../dockerfile/convert.js';

const plan = (over: Partial<S2IDockerfilePlan> = {}): S2IDockerfilePlan => ({
  builderImage: 'registry/builder:1',
  assembleUser: '1001',
  destination: '/tmp',
  imageScriptsDir: '/usr/libexec/s2i',
  providedScripts: new Set(),
  labels: { 'io.openshift.s2i.build.image': 'registry/builder:1', 'io.k8s.display-name': 'app:1' },
  env: [{ name: 'A', value: 'x"$y\\' }],
  ...over,
});

test('the text s2i --as-dockerfile writes (v1.5+): labels, env, COPY --chown, USER, RUN assemble, CMD run', () => {
  assert.equal(
    s2iDockerfile(plan()),
    `FROM registry/builder:1
LABEL "io.k8s.display-name"="app:1" \\
      "io.openshift.s2i.build.image"="registry/builder:1"
ENV A="x\\"\\$y\\\\"
# Copying in source code
COPY --chown=1001:0 upload/src /tmp/src
USER 1001
# Assemble script sourced from builder image based on user input or image metadata.
# If this file does not exist in the image, the build will fail.
RUN /usr/libexec/s2i/assemble
# Run script sourced from builder image based on user input or image metadata.
# If this file does not exist in the image, the build will fail.
CMD /usr/libexec/s2i/run
`,
  );
});

test('provided scripts are copied to DEST/scripts and used; root skips USER; an empty env is a blank line', () => {
  const t = s2iDockerfile(
    plan({ providedScripts: new Set(['assemble', 'run']), assembleUser: 'root', env: [], destination: '/opt/s2i' }),
  );
  assert.match(
    t,
    /\n\n# Copying in override assemble\/run scripts\nCOPY --chown=root:0 upload\/scripts \/opt\/s2i\/scripts\n/,
  );
  assert.doesNotMatch(t, /^USER/m);
  assert.match(t, /^RUN \/opt\/s2i\/scripts\/assemble$/m);
  assert.match(t, /^CMD \/opt\/s2i\/scripts\/run$/m);
});

test('incremental: the previous image runs save-artifacts (s2i), or kiln feeds the cached tar through a scratch stage', () => {
  const prev = s2iDockerfile(plan({ incremental: { kind: 'previous', image: 'app:1' } }));
  assert.match(
    prev,
    /^FROM app:1 as cached\n# Save-artifacts script sourced from builder image based on user input or image metadata.\nUSER 1001\nRUN if \[ -s \/usr\/libexec\/s2i\/save-artifacts \]; then \/usr\/libexec\/s2i\/save-artifacts > \/tmp\/artifacts.tar; else touch \/tmp\/artifacts.tar; fi\nFROM registry\/builder:1\n/,
  );
  assert.match(prev, /COPY --chown=1001:0 --from=cached \/tmp\/artifacts.tar \/tmp\/artifacts.tar\n/);
  assert.match(
    prev,
    /RUN if \[ -s \/tmp\/artifacts.tar \]; then mkdir -p \/tmp\/artifacts; tar -xf \/tmp\/artifacts.tar -C \/tmp\/artifacts; fi && \\\n {4}rm \/tmp\/artifacts.tar\n/,
  );
  const cached = s2iDockerfile(plan({ incremental: { kind: 'cached' } }));
  assert.match(
    cached,
    /^FROM scratch as cached\nCOPY upload\/artifacts.tar \/tmp\/artifacts.tar\nFROM registry\/builder:1\n/,
  );
  // the final stage is the same text either way
  assert.equal(prev.slice(prev.indexOf('FROM registry')), cached.slice(cached.indexOf('FROM registry')));
});

test('cache dirs become RUN --mount=type=cache on assemble (owned by a numeric assemble user)', () => {
  const t = s2iDockerfile(plan({ cacheDirs: [{ target: '/opt/app/.m2', id: 's2i-x', uid: 1001 }] }));
  assert.match(
    t,
    /^RUN --mount=type=cache,id=s2i-x,target=\/opt\/app\/.m2,uid=1001,gid=0 \/usr\/libexec\/s2i\/assemble$/m,
  );
  const parsed = parseDockerfile(t);
  const run = parsed.stages[0]?.commands.find((c) => c.kind === 'RUN');
  assert.ok(run && run.kind === 'RUN' && run.mounts.length === 1);
});

test('runtime image: artifacts COPY --link from the assembled stage into WORKDIR, assemble-runtime as the runtime user', () => {
  const t = s2iDockerfile(
    plan({
      runtime: {
        image: 'registry/runtime:1',
        user: '1002',
        workdir: '/srv',
        scriptsDir: '/usr/libexec/s2i',
        providedScripts: new Set(),
        artifacts: [{ source: '/opt/app/bin/app', destination: 'bin' }],
      },
    }),
  );
  assert.match(t, /\nFROM registry\/runtime:1\n/);
  assert.match(t, /^COPY --link --chown=1002:0 --from=0 \/opt\/app\/bin\/app \/srv\/bin\/$/m);
  assert.match(t, /^USER 1002\nRUN \/usr\/libexec\/s2i\/assemble-runtime\nCMD \/usr\/libexec\/s2i\/run\n$/m);
  assert.equal(parseDockerfile(t).stages.length, 2);
});

test('goQuote is Go\'s %q; envInstruction escapes $ " \\ like s2i', () => {
  assert.equal(goQuote('a"b\\c\nd\te\x01é'), '"a\\"b\\\\c\\nd\\te\\x01é"');
  assert.equal(envInstruction([]), '\n');
  assert.equal(
    envInstruction([
      { name: 'A', value: '1' },
      { name: 'B', value: '$x' },
    ]),
    'ENV A="1" \\\n    B="\\$x"\n',
  );
});

test('foldCopiesIntoRun: the COPYs before the assemble RUN (and an incremental build’s before the extraction RUN) fold; nothing else', async () => {
  const { foldCopiesIntoRun } = await import('./frontend.js');
  const folded = (p: S2IDockerfilePlan, stage: number): string[] => {
    const st = parseDockerfile(s2iDockerfile(p)).stages[stage];
    assert.ok(st);
    foldCopiesIntoRun(st);
    return st.commands.flatMap((c) => (c.kind === 'COPY' && c.foldIntoRun ? [c.original] : []));
  };
  assert.deepEqual(folded(plan({ providedScripts: new Set(['assemble']) }), 0), [
    'COPY --chown=1001:0 upload/scripts /tmp/scripts',
    'COPY --chown=1001:0 upload/src /tmp/src',
  ]);
  assert.deepEqual(folded(plan({ incremental: { kind: 'cached' } }), 1), [
    'COPY --chown=1001:0 --from=cached /tmp/artifacts.tar /tmp/artifacts.tar',
    'COPY --chown=1001:0 upload/src /tmp/src',
  ]);
  // the runtime stage's COPY --link layers stay layers of their own (rebasable)
  const rt = plan({
    runtime: {
      image: 'registry/rt:1',
      user: '1002',
      workdir: '/srv',
      scriptsDir: '/usr/libexec/s2i',
      providedScripts: new Set(),
      artifacts: [{ source: '/opt/app/x', destination: 'app' }],
    },
  });
  assert.deepEqual(folded(rt, 1), []);
  // a COPY with a LABEL between it and the RUN is not folded
  const st = parseDockerfile('FROM b\nCOPY a /a\nLABEL x=1\nRUN true\nCOPY c /c\nCMD x\n').stages[0];
  assert.ok(st);
  foldCopiesIntoRun(st);
  assert.ok(st.commands.every((c) => c.kind !== 'COPY' || !c.foldIntoRun));
});
