import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseDockerfile } from './convert.js';
import type { Command } from './instructions.js';
import {
  EnvList,
  defaultArgs,
  parseBuildArgs,
  proxyEnv,
  resolveGlobalArgs,
  unusedBuildArgs,
  unusedBuildArgsWarning,
} from './args.js';
import { DEFAULT_PATH_ENV, StageScope, expandStage, joinCsv, withDefaultPath, type ExpandedStep } from './expand.js';
import { csvFields } from './convert.js';
import { isKilnError } from '../errors.js';

const linux = { os: 'linux', architecture: 'arm', variant: 'v7' };

function run(
  text: string,
  o: { buildArgs?: Record<string, string>; baseEnv?: string[]; stage?: number } = {},
): { steps: ExpandedStep<Command>[]; scope: StageScope } {
  const df = parseDockerfile(text);
  const buildArgs = new Map(Object.entries(o.buildArgs ?? {}));
  const globals = resolveGlobalArgs(df.globalArgs, { targetPlatform: linux, buildArgs });
  const opts = { globals, buildArgs };
  const scopes: StageScope[] = [];
  let steps: ExpandedStep<Command>[] = [];
  for (const st of df.stages) {
    const parent = df.stages.findIndex((s) => s.name !== undefined && s.name === st.from.image);
    const scope =
      parent >= 0 && parent < st.index
        ? StageScope.forStage(opts, scopes[parent]!)
        : StageScope.forImage(opts, o.baseEnv ?? []);
    const s = st.commands.map((c) => scope.expand(c));
    scopes.push(scope);
    if (st.index === (o.stage ?? df.stages.length - 1)) steps = s;
  }
  return { steps, scope: scopes[o.stage ?? df.stages.length - 1]! };
}

test('global ARGs are only visible in FROM unless re-declared; ARG NAME inherits the global value', () => {
  const { steps } = run('ARG V=1.0\nARG IMG=alpine:$V\nFROM $IMG\nRUN echo $V\nARG V\nENV A=$V B=$IMG\n');
  const env = steps[2]!;
  assert.equal(env.instruction.kind, 'ENV');
  if (env.instruction.kind === 'ENV') {
    assert.deepEqual(
      env.instruction.env.map((e) => [e.key, e.value]),
      [
        ['A', '1.0'],
        ['B', ''],
      ],
    );
  }
  assert.deepEqual(
    env.warnings.map((w) => w.message),
    ["Usage of undefined variable '$IMG'"],
  );
  const arg = steps[1]!;
  assert.equal(arg.createdBy, 'ARG V=1.0');
  assert.ok(arg.env.includes('V=1.0'));
  // RUN before the ARG: not in scope, not in the env.
  assert.equal(
    steps[0]!.runEnv?.some((e) => e.startsWith('V=')),
    false,
  );
});

test('build args override defaults (global and stage), are consumed, and ENV shadows ARG', () => {
  const { steps, scope } = run('ARG G=g\nFROM scratch\nARG G\nARG S=s\nARG U\nENV S=env-$S\nRUN true\n', {
    buildArgs: { G: 'G!', S: 'S!', X: 'x' },
  });
  assert.equal(steps[0]!.createdBy, 'ARG G=G!');
  assert.equal(steps[1]!.createdBy, 'ARG S=S!');
  assert.equal(steps[2]!.createdBy, 'ARG U');
  const run_ = steps[4]!;
  assert.ok(run_.env.includes('S=env-S!'));
  assert.equal(scope.lookup('S'), 'env-S!');
  assert.equal(scope.runCommandString(['/bin/sh', '-c', 'true']), '|3 G=G! S=env-S! U= /bin/sh -c true');
  assert.deepEqual([...scope.consumed].sort(), ['G', 'S']);
  assert.deepEqual(run_.configEnv, [`PATH=${DEFAULT_PATH_ENV}`, 'S=env-S!']);
});

test('ARG default is expanded with the stage environment (image env included)', () => {
  const { steps } = run('FROM img\nARG P=$HOME/bin:$PATH\nARG Q=${NOPE:-dflt}\n', {
    baseEnv: ['HOME=/root', 'PATH=/bin'],
  });
  assert.equal(steps[0]!.createdBy, 'ARG P=/root/bin:/bin');
  assert.equal(steps[1]!.createdBy, 'ARG Q=dflt');
  assert.deepEqual(
    steps[1]!.warnings.map((w) => w.name),
    ['NOPE'],
  );
});

test('platform args are global: need ARG in a stage; build-arg overrides apply', () => {
  const a = run(
    'FROM scratch\nRUN echo $TARGETARCH\nARG TARGETARCH\nARG TARGETPLATFORM BUILDVARIANT\nENV X=$TARGETARCH\n',
  );
  assert.equal(
    a.steps[0]!.runEnv?.some((e) => e.startsWith('TARGETARCH=')),
    false,
  );
  assert.equal(a.steps[1]!.createdBy, 'ARG TARGETARCH=arm');
  assert.equal(a.steps[2]!.createdBy, 'ARG TARGETPLATFORM=linux/arm/v7 BUILDVARIANT=v7');
  const b = run('FROM scratch\nARG TARGETOS\n', { buildArgs: { TARGETOS: 'freebsd' } });
  assert.equal(b.steps[0]!.createdBy, 'ARG TARGETOS=freebsd');
  const d = defaultArgs({ targetPlatform: linux, target: '' });
  assert.deepEqual(d.keys(), [
    'BUILDPLATFORM',
    'BUILDOS',
    'BUILDOSVERSION',
    'BUILDARCH',
    'BUILDVARIANT',
    'TARGETPLATFORM',
    'TARGETOS',
    'TARGETOSVERSION',
    'TARGETARCH',
    'TARGETVARIANT',
    'TARGETSTAGE',
  ]);
  assert.equal(d.get('TARGETSTAGE'), 'default');
  assert.equal(
    defaultArgs({ targetPlatform: { os: 'windows', architecture: 'amd64', 'os.version': '10.0' } }).get(
      'TARGETPLATFORM',
    ),
    'windows(10.0)/amd64',
  );
});

test('proxy build args reach RUN without ARG and stay out of history unless declared', () => {
  const a = run('FROM scratch\nRUN true\n', { buildArgs: { http_proxy: 'http://p:3128', NO_PROXY: 'x' } });
  assert.deepEqual(a.steps[0]!.runEnv, [
    `PATH=${DEFAULT_PATH_ENV}`,
    'HTTP_PROXY=http://p:3128',
    'http_proxy=http://p:3128',
    'NO_PROXY=x',
    'no_proxy=x',
  ]);
  assert.equal(a.scope.runCommandString(['true']), 'true');
  const b = run('FROM scratch\nARG http_proxy\nRUN true\n', { buildArgs: { http_proxy: 'http://p' } });
  assert.equal(b.scope.runCommandString(['true']), '|1 http_proxy=http://p true');
  assert.deepEqual(
    proxyEnv(
      new Map([
        ['HTTP_PROXY', 'A'],
        ['http_proxy', 'b'],
      ]),
    ),
    ['HTTP_PROXY=b', 'http_proxy=b'],
  );
  assert.deepEqual(proxyEnv(new Map([['HTTPS_PROXY', '']])), []);
});

test('FROM <stage> inherits env and ARGs (history prefix included)', () => {
  const { steps, scope } = run('FROM scratch AS base\nARG A=1\nENV E=e\nFROM base\nARG B=2\nRUN x\n');
  assert.ok(steps[1]!.env.includes('A=1'));
  assert.ok(steps[1]!.env.includes('E=e'));
  assert.equal(scope.runCommandString(['/bin/sh', '-c', 'x']), '|2 A=1 B=2 /bin/sh -c x');
});

test('which instructions and fields expand', () => {
  const text = [
    'FROM scratch',
    'ARG D=/dst U=1000 M=755 N=name P="80 443/udp"',
    'COPY --from=$N --chown=$U:$U --chmod=$M src/$N $D/',
    'ADD --checksum=sha256:$N --chown=$U http://x/$N $D',
    'WORKDIR $D/w',
    'USER $U',
    'VOLUME $D/v ["/$N"]',
    'STOPSIGNAL SIG$N',
    'LABEL $N=$U "k"="$D"',
    'EXPOSE $P',
    'CMD echo $N',
    'ENTRYPOINT ["$N"]',
    'RUN --mount=type=cache,target=$D/cache,id=$N echo $N',
    'HEALTHCHECK CMD echo $N',
    'ONBUILD RUN echo $N',
    'SHELL ["/bin/$N"]',
  ].join('\n');
  const { steps } = run(text + '\n');
  const by = (k: string): Command => steps.find((s) => s.instruction.kind === k)!.instruction;
  const copy = by('COPY');
  if (copy.kind === 'COPY') {
    assert.equal(copy.from, '$N', 'COPY --from is never expanded');
    assert.deepEqual([copy.chown, copy.chmod, copy.sources, copy.dest], ['1000:1000', '755', ['src/name'], '/dst/']);
  }
  const add = by('ADD');
  if (add.kind === 'ADD')
    assert.deepEqual(
      [add.checksum, add.chown, add.sources, add.dest],
      ['sha256:name', '1000', ['http://x/name'], '/dst'],
    );
  const wd = by('WORKDIR');
  if (wd.kind === 'WORKDIR') assert.equal(wd.path, '/dst/w');
  const user = by('USER');
  if (user.kind === 'USER') assert.equal(user.user, '1000');
  const vol = by('VOLUME');
  if (vol.kind === 'VOLUME') assert.deepEqual(vol.volumes, ['/dst/v', '[/name]'], 'quotes are processed by expansion');
  const sig = by('STOPSIGNAL');
  if (sig.kind === 'STOPSIGNAL') assert.equal(sig.signal, 'SIGname');
  const label = by('LABEL');
  if (label.kind === 'LABEL')
    assert.deepEqual(
      label.labels.map((l) => [l.key, l.value]),
      [
        ['name', '1000'],
        ['k', '/dst'],
      ],
    );
  const expose = by('EXPOSE');
  if (expose.kind === 'EXPOSE') assert.deepEqual(expose.ports, ['80', '443/udp'], 'EXPOSE expands and splits words');
  for (const k of ['CMD', 'ENTRYPOINT', 'HEALTHCHECK', 'ONBUILD', 'SHELL']) {
    const orig = parseDockerfile(text).stages[0]!.commands.find((c) => c.kind === k);
    assert.deepEqual(by(k), orig, `${k} is not expanded`);
  }
  const runStep = steps.find((s) => s.instruction.kind === 'RUN')!;
  if (runStep.instruction.kind === 'RUN') {
    assert.deepEqual(runStep.instruction.command, ['echo $N'], 'RUN command is left to the shell');
    assert.deepEqual(runStep.instruction.mounts, ['type=cache,target=/dst/cache,id=name']);
  }
  assert.equal(runStep.mounts?.[0]?.target, '/dst/cache');
  assert.equal(runStep.mounts?.[0]?.cacheId, 'name');
  assert.equal(runStep.mounts?.[0]?.type, 'cache');
});

test('ENV values use the environment before the instruction; config Env replaced in place', () => {
  const { steps } = run('FROM img\nENV A=1\nENV A=2 B=$A\nENV PATH=$PATH:/x\n', { baseEnv: ['PATH=/bin', 'Z=z'] });
  assert.equal(steps[1]!.createdBy, 'ENV A=2 B=1');
  assert.deepEqual(steps[2]!.configEnv, ['PATH=/bin:/x', 'Z=z', 'A=2', 'B=1']);
  // state env: a re-set key moves to the end (llb.EnvList)
  assert.deepEqual(steps[2]!.env, ['Z=z', 'A=2', 'B=1', 'PATH=/bin:/x']);
});

test('heredoc COPY sources expand with the raw lexer only when unquoted', () => {
  const { steps } = run('FROM scratch\nARG N=x\nCOPY <<EOF <<"RAW" /d/\n"$N" \\$N\nEOF\n$N\nRAW\n');
  const c = steps[1]!.instruction;
  assert.equal(c.kind, 'COPY');
  if (c.kind === 'COPY') {
    assert.deepEqual(
      c.sourceContents.map((s) => s.data),
      ['"x" $N\n', '$N\n'],
    );
  }
});

test('expansion errors name the Dockerfile line', () => {
  assert.throws(
    () => run('FROM scratch\nENV A=1\nWORKDIR ${A:?must be set}${B:?B is required}\n'),
    (e: unknown) => isKilnError(e, 'DOCKERFILE_EXPANSION') && /^Dockerfile:3: .*B: B is required/.test(e.message),
  );
  assert.throws(
    () => run('ARG X=${\nFROM scratch\n'),
    (e: unknown) => isKilnError(e, 'DOCKERFILE_EXPANSION') && e.message.startsWith('Dockerfile:1:'),
  );
  assert.throws(() => run("FROM scratch\nRUN --mount='type=bind,target=a\"b' true\n"), /Dockerfile:2/);
});

test('--build-arg parsing and the unused build-arg warning', () => {
  const m = parseBuildArgs(['A=1', 'B', 'C', 'D=x=y', 'A=2'], { B: 'from-env' });
  assert.deepEqual(
    [...m],
    [
      ['A', '2'],
      ['B', 'from-env'],
      ['D', 'x=y'],
    ],
  );
  assert.throws(
    () => parseBuildArgs(['=x']),
    (e: unknown) => isKilnError(e, 'BUILD_ARG_INVALID'),
  );
  const unused = unusedBuildArgs(
    new Map([
      ['Z', '1'],
      ['A', '1'],
      ['HTTP_PROXY', 'p'],
      ['TARGETARCH', 'x'],
      ['BUILDKIT_INLINE_CACHE', '1'],
      ['Https_Proxy', 'p'],
      ['Y', ''],
    ]),
    new Set(['A']),
  );
  assert.deepEqual(unused, ['Y', 'Z']);
  assert.equal(unusedBuildArgsWarning(unused), '[Warning] One or more build-args [Y Z] were not consumed');
  assert.equal(unusedBuildArgsWarning([]), undefined);
});

test('EnvList, withDefaultPath, csv round trip', () => {
  const e = new EnvList(['A=1', 'B=2']).set('A', '3');
  assert.deepEqual(e.toArray(), ['B=2', 'A=3']);
  assert.deepEqual(withDefaultPath(['X=1']), ['X=1', `PATH=${DEFAULT_PATH_ENV}`]);
  assert.deepEqual(withDefaultPath(['PATH=/x']), ['PATH=/x']);
  for (const f of [['a=1', 'b=x,y', 'c="q"', ' d'], ['ro']]) assert.deepEqual(csvFields(joinCsv(f)), f);
});

test('UndefinedVar candidates follow BuildKit: not for EXPOSE, yes for mounts and raw heredoc sources', () => {
  const { steps } = run(
    'FROM scratch\nEXPOSE $NOPORT 80\nRUN --mount=type=cache,target=$NOTARGET true\nCOPY <<EOF /x\n$NOHEREDOC\nEOF\n',
  );
  assert.deepEqual(
    steps.map((s) => s.warnings.map((w) => w.name)),
    [[], ['NOTARGET'], ['NOHEREDOC']],
  );
  const expose = steps[0]!.instruction;
  if (expose.kind === 'EXPOSE') assert.deepEqual(expose.ports, ['80']);
});

test('expandStage: whole stages, parent scopes and ONBUILD triggers first', () => {
  const df = parseDockerfile('FROM scratch AS a\nARG X=1\nFROM a\nENV Y=$X\n');
  const buildArgs = new Map<string, string>();
  const globals = resolveGlobalArgs(df.globalArgs, { targetPlatform: linux, buildArgs });
  const a = expandStage(df.stages[0]!, { globals, buildArgs, baseEnv: ['PATH=/bin'] });
  const trigger = parseDockerfile('FROM scratch\nENV T=$X\n').stages[0]!.commands;
  const b = expandStage(df.stages[1]!, { globals, buildArgs, parent: a.scope, triggers: trigger });
  assert.deepEqual(
    b.steps.map((s) => s.createdBy),
    ['ENV T=1', 'ENV Y=1'],
  );
  assert.deepEqual(b.scope.configEnv, ['PATH=/bin', 'T=1', 'Y=1']);
  assert.deepEqual(a.scope.configEnv, ['PATH=/bin'], 'the parent scope is not modified');
});
