import { test } from 'node:test';
import assert from 'node:assert/strict';
import { csvFields, parseDevice, parseDockerfile, parseGoDuration, parseMount, ramInBytes } from './convert.js';
import { DockerfileError } from './errors.js';
import { expandInstruction, type Instruction } from './instructions.js';

function fails(text: string, re: RegExp, code?: string, line?: number): DockerfileError {
  let err: unknown;
  try {
    parseDockerfile(text);
  } catch (e) {
    err = e;
  }
  assert.ok(err instanceof DockerfileError, `expected DockerfileError for ${JSON.stringify(text)}, got ${String(err)}`);
  assert.match(err.message, re);
  if (code !== undefined) assert.equal(err.code, code);
  if (line !== undefined) assert.equal(err.startLine, line);
  return err;
}

function only(text: string): Instruction {
  const p = parseDockerfile(text);
  const st = p.stages[p.stages.length - 1]!;
  return st.commands[st.commands.length - 1] ?? st.from;
}

test('stages, global args and names', () => {
  const p = parseDockerfile('ARG A=1\nARG B\nFROM x AS One\nRUN a\nFROM one\nCOPY --from=one / /\n');
  assert.deepEqual(
    p.globalArgs.map((a) => a.args),
    [[{ key: 'A', value: '1', docComment: '' }], [{ key: 'B', value: undefined, docComment: '' }]],
  );
  assert.equal(p.stages.length, 2);
  assert.equal(p.stages[0]!.name, 'one');
  assert.equal(p.stages[0]!.from.stageNameAsWritten, 'One');
  assert.equal(p.stages[1]!.name, undefined);
  assert.equal(p.stages[0]!.commands[0]!.kind, 'RUN');
  assert.equal(p.instructions.length, 6);
});

test('unknown instructions and flags get suggestions', () => {
  fails(
    'FROM a\nRUNN x',
    /^Dockerfile:2: unknown instruction: RUNN \(did you mean RUN\?\)$/,
    'DOCKERFILE_UNKNOWN_INSTRUCTION',
    2,
  );
  fails('FROM a\nworkdri /x', /unknown instruction: workdri \(did you mean workdir\?\)/);
  fails('FROM a\nFOOBAR x', /^Dockerfile:2: unknown instruction: FOOBAR$/);
  fails('FROM a\nCOPY --chwon=1 a b', /unknown flag: --chwon \(did you mean chown\?\)/, 'DOCKERFILE_UNKNOWN_FLAG');
  fails('FROM a\nRUN --mout=type=cache x', /unknown flag: --mout \(did you mean mount\?\)/);
  fails('FROM a\nENV --x a=b', /unknown flag: --x$/);
  fails('FROM --plattform=x a', /unknown flag: --plattform \(did you mean platform\?\)/);
});

test('flag value validation (BuildKit BFlags)', () => {
  fails('FROM a\nCOPY --link=maybe a b', /expecting boolean value for flag --link, not: maybe/);
  fails('FROM a\nCOPY --link= a b', /missing a value on flag: --link/);
  fails('FROM a\nCOPY --from a b', /missing a value on flag: --from/);
  fails('FROM a\nCOPY --from=x --from=y a b', /duplicate flag specified: --from/);
  const c = only('FROM a\nCOPY --exclude=a --exclude=b --link=FALSE x y');
  assert.equal(c.kind, 'COPY');
  if (c.kind === 'COPY') {
    assert.deepEqual(c.exclude, ['a', 'b']);
    assert.equal(c.link, false);
  }
  // STOPSIGNAL and ARG never parse their flags in BuildKit.
  assert.equal(only('FROM a\nSTOPSIGNAL --whatever SIGKILL').kind, 'STOPSIGNAL');
});

test('argument count errors', () => {
  fails('FROM', /FROM requires either one or three arguments/);
  fails('FROM a b', /FROM requires either one or three arguments/);
  fails('FROM a AS 9x', /invalid name for build stage: "9x", name can't start with a number or contain symbols/);
  fails('FROM a AS b$c', /invalid name for build stage/);
  fails('FROM a\nCOPY onlyone', /COPY requires at least two arguments, but only one was provided/);
  fails('FROM a\nADD x', /ADD requires at least two arguments/);
  fails('FROM a\nWORKDIR', /WORKDIR requires exactly one argument/);
  fails('FROM a\nUSER', /USER requires exactly one argument/);
  fails('FROM a\nEXPOSE', /EXPOSE requires at least one argument/);
  fails('FROM a\nVOLUME []', /VOLUME requires at least one argument/);
  fails('FROM a\nVOLUME [""]', /VOLUME specified can not be an empty string/);
  fails('FROM a\nARG', /ARG requires at least one argument/);
  fails('FROM a\nARG =x', /ARG names can not be blank/);
  fails('FROM a\nENV =x', /ENV names can not be blank/);
  fails('FROM a\nLABEL', /LABEL requires at least one argument/);
  fails('FROM a\nSHELL /bin/sh -c', /SHELL requires the arguments to be in JSON form/);
  fails('FROM a\nSHELL []', /SHELL requires at least one argument/);
  fails('FROM a\nMAINTAINER', /MAINTAINER requires exactly one argument/);
  fails('FROM a\nSTOPSIGNAL', /STOPSIGNAL requires exactly one argument/);
  fails('FROM a\nONBUILD', /ONBUILD requires at least one argument/);
  fails('FROM a\nONBUILD ONBUILD RUN x', /Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed/);
  fails('FROM a\nONBUILD FROM x', /FROM isn't allowed as an ONBUILD trigger/);
  fails('FROM a\nONBUILD maintainer x', /MAINTAINER isn't allowed as an ONBUILD trigger/);
  fails('RUN x', /no build stage in current context/, undefined, 1);
  fails('FROM a\nCOPY a <<EOF\nx\nEOF\n', /COPY cannot accept a heredoc as a destination/);
});

test('shell vs exec form of RUN/CMD/ENTRYPOINT', () => {
  const r = only('FROM a\nRUN echo  "a b"   c');
  assert.ok(r.kind === 'RUN');
  assert.deepEqual(r.command, ['echo  "a b"   c']);
  assert.equal(r.prependShell, true);
  const e = only('FROM a\nENTRYPOINT ["a", "b c"]');
  assert.ok(e.kind === 'ENTRYPOINT');
  assert.deepEqual(e.command, ['a', 'b c']);
  assert.equal(e.prependShell, false);
  assert.equal(e.json, true);
  const cmd = only('FROM a\nCMD');
  assert.ok(cmd.kind === 'CMD');
  assert.deepEqual(cmd.command, []);
});

test('RUN flags: network, security, device, mounts validated like BuildKit at parse time', () => {
  fails('FROM a\nRUN --network=bridge x', /invalid network mode "bridge"/);
  fails('FROM a\nRUN --security=privileged x', /security "privileged" is not valid/);
  fails(
    'FROM a\nRUN --mount=type=bind,from=$X x',
    /'from' doesn't support variable expansion, define alias stage instead/,
  );
  fails(
    'FROM a\nRUN --mount=type=bind,src=a\\"b x',
    /failed to parse csv mounts: parse error on line 1, column 16: bare "/,
  );
  fails('FROM a\nRUN --mount= x', /failed to parse csv mounts: EOF/);
  fails('FROM a\nRUN --device=a,b x', /invalid field 'b' must be a key=value pair/);
  const r = only('FROM a\nRUN --network=host --mount=type=cache,target=/c x');
  assert.ok(r.kind === 'RUN');
  assert.equal(r.network, 'host');
  assert.deepEqual(r.flagsUsed.sort(), ['mount', 'network']);
  assert.deepEqual(r.mounts, ['type=cache,target=/c']);
});

test('parseMount: every option and the BuildKit checks', () => {
  const id = (w: string): string => w;
  assert.deepEqual(parseMount('type=cache,target=/root/.cache,id=pip,sharing=locked,mode=0755,uid=1000,gid=1000', id), {
    type: 'cache',
    from: '',
    source: '',
    target: '/root/.cache',
    readOnly: false,
    sizeLimit: 0,
    cacheId: 'pip',
    cacheSharing: 'locked',
    required: false,
    env: undefined,
    mode: 0o755,
    uid: 1000,
    gid: 1000,
  });
  const b = parseMount('from=build,src=/out,dst=/in', id);
  assert.equal(b.type, 'bind');
  assert.equal(b.readOnly, true);
  assert.equal(b.source, '/out');
  assert.equal(b.target, '/in');
  assert.equal(parseMount('target=/x,rw', id).readOnly, false);
  assert.equal(parseMount('target=/x,readwrite=true', id).readOnly, false);
  assert.equal(parseMount('type=cache,target=/x,ro', id).readOnly, true);
  assert.equal(parseMount('type=tmpfs,destination=/t,size=64m', id).sizeLimit, 64 * 1024 * 1024);
  const s = parseMount('type=secret,id=tok,env=TOKEN,required', id);
  assert.equal(s.env, 'TOKEN');
  assert.equal(s.required, true);
  assert.equal(s.readOnly, true);
  assert.equal(parseMount('type=ssh,required=false', id).required, false);
  assert.equal(parseMount('TYPE=CACHE,Target=/x', id).type, 'cache');
  // Expansion is applied to every value.
  assert.equal(parseMount('type=cache,target=$D', (w) => w.replace('$D', '/deps')).target, '/deps');

  const bad: [string, RegExp][] = [
    ['type=cahce,target=/x', /unsupported mount type "cahce" \(did you mean cache\?\)/],
    ['type=cache,sharing=lock', /unsupported sharing value "lock" \(did you mean locked\?\)/],
    ['type=cache,target=/x,taget=/y', /unexpected key 'taget' in 'taget=\/y' \(did you mean target\?\)/],
    ['type=bind,mode=0755', /mode not allowed for "bind" type mounts/],
    ['type=tmpfs,uid=1', /uid not allowed for "tmpfs" type mounts/],
    ['type=cache,mode=999', /invalid value 999 for mode/],
    ['type=cache,uid=-1', /invalid value -1 for uid/],
    ['type=bind,required', /unexpected key 'required' for mount type 'bind'/],
    ['type=cache,size=1m', /unexpected key 'size' for mount type 'cache'/],
    ['type=tmpfs,size=lots', /invalid value for size: lots/],
    ['type=secret,from=x,id=a', /secret mount should not have a from/],
    ['type=secret,id=a,sharing=shared', /secret mount should not define sharing/],
    ['type=secret', /invalid secret mount. one of source, target required/],
    ['type=secret,source=a,id=b', /both source and id can't be set/],
    ['type=bind,sharing=shared', /invalid cache sharing set for bind mount/],
    ['type=cache,ro=maybe', /invalid value for ro: maybe/],
    ['target', /invalid field 'target' must be a key=value pair/],
  ];
  for (const [spec, re] of bad) assert.throws(() => parseMount(spec, id), re, spec);
  // Without an expander only the from check runs (BuildKit defers the rest until expansion).
  assert.equal(parseMount('type=nonsense,target=/x').type, 'bind');
});

test('parseDevice', () => {
  assert.deepEqual(parseDevice('/dev/fuse'), { name: '/dev/fuse', required: false });
  assert.deepEqual(parseDevice('name=vendor.com/gpu=all,required'), { name: 'vendor.com/gpu=all', required: true });
  assert.throws(() => parseDevice('name=a,name=b'), /device name already set to a/);
});

test('csvFields (tonistiigi/go-csvvalue semantics)', () => {
  assert.deepEqual(csvFields('a,b,c'), ['a', 'b', 'c']);
  assert.deepEqual(csvFields('"a,b",c'), ['a,b', 'c']);
  assert.deepEqual(csvFields('"say ""hi""",x'), ['say "hi"', 'x']);
  assert.deepEqual(csvFields('a,'), ['a', '']);
  assert.deepEqual(csvFields(',"",'), ['', '', '']);
  assert.deepEqual(csvFields('a\n'), ['a']);
  assert.throws(() => csvFields(''), /^Error: EOF$/);
  assert.throws(() => csvFields('ab"c'), /^Error: parse error on line 1, column 3: bare " in non-quoted-field$/);
  assert.throws(() => csvFields('é,x"'), /column 5: bare "/);
  assert.throws(
    () => csvFields('"a"b'),
    /^Error: parse error on line 1, column 3: extraneous or missing " in quoted-field$/,
  );
  assert.throws(() => csvFields('x,"abc'), /column 4: extraneous or missing "/);
});

test('Go durations and sizes', () => {
  assert.equal(parseGoDuration('1h2m3.5s'), 3723.5e9);
  assert.equal(parseGoDuration('300ms'), 300e6);
  assert.equal(parseGoDuration('1µs'), 1000);
  assert.equal(parseGoDuration('0'), 0);
  assert.equal(parseGoDuration('.5s'), 0.5e9);
  assert.throws(() => parseGoDuration('5'), /time: missing unit in duration "5"/);
  assert.throws(() => parseGoDuration('5x'), /time: unknown unit "x" in duration "5x"/);
  assert.throws(() => parseGoDuration(''), /time: invalid duration ""/);
  assert.throws(() => parseGoDuration('s'), /time: invalid duration "s"/);
  assert.equal(ramInBytes('512k'), 512 * 1024);
  assert.equal(ramInBytes('1.5GiB'), 1.5 * 1024 ** 3);
  assert.equal(ramInBytes('100'), 100);
  assert.throws(() => ramInBytes('1x'), /invalid suffix: 'x'/);
  assert.throws(() => ramInBytes('x'), /invalid size: 'x'/);
  assert.throws(() => ramInBytes('-1k'), /invalid size/);
  assert.throws(() => ramInBytes('1kbb'), /invalid suffix/);
  assert.throws(() => ramInBytes('1.2.3'), /invalid syntax/);
  assert.equal(ramInBytes('100 MB'), 100 * 1024 ** 2);
  assert.equal(ramInBytes('1e3'), 1000);
  assert.equal(ramInBytes('2KiB'), 2048);
});

test('HEALTHCHECK options and errors', () => {
  fails('FROM a\nHEALTHCHECK', /HEALTHCHECK requires at least one argument/);
  fails('FROM a\nHEALTHCHECK NONE x', /HEALTHCHECK NONE takes no arguments/);
  fails('FROM a\nHEALTHCHECK CMD', /Missing command after HEALTHCHECK CMD/);
  fails('FROM a\nHEALTHCHECK CONNECT TCP 7000', /Unknown type "CONNECT" in HEALTHCHECK \(try CMD\)/);
  fails('FROM a\nHEALTHCHECK --interval=10 CMD x', /time: missing unit in duration "10"/);
  fails('FROM a\nHEALTHCHECK --timeout=100us CMD x', /Interval "timeout" cannot be less than 1ms/);
  fails('FROM a\nHEALTHCHECK --retries=-1 CMD x', /--retries cannot be negative \(-1\)/);
  fails('FROM a\nHEALTHCHECK --retries=x CMD x', /strconv.ParseInt: parsing "x": invalid syntax/);
  fails('FROM a\nHEALTHCHECK --intervall=1s CMD x', /unknown flag: --intervall \(did you mean interval\?\)/);
  // NONE ignores flags entirely, like BuildKit.
  const h = only('FROM a\nHEALTHCHECK --bogus NONE');
  assert.ok(h.kind === 'HEALTHCHECK');
  assert.deepEqual(h.health.test, ['NONE']);
});

test('expandInstruction touches exactly the expandable words', () => {
  const p = parseDockerfile(
    [
      'FROM $IMG AS b',
      'ENV $K=$V',
      'COPY --from=$S --chown=$U $SRC $DST',
      'RUN --mount=type=cache,target=$T echo $NOT',
      'CMD echo $NOT',
      'WORKDIR $W',
      'ADD <<EOF /x',
      '$IN_HEREDOC',
      'EOF',
      'COPY <<"Q" /y',
      '$NOT',
      'Q',
    ].join('\n'),
  );
  const up = (w: string): string => w.replace(/\$([A-Z_]+)/g, (_, n: string) => `<${n.toLowerCase()}>`);
  const from = expandInstruction(p.stages[0]!.from, up);
  assert.equal(from.image, '<img>');
  assert.equal(p.stages[0]!.from.image, '$IMG', 'input not modified');
  const [env, copy, run, cmd, wd, add, copy2] = p.stages[0]!.commands.map((c) => expandInstruction(c, up));
  assert.ok(env?.kind === 'ENV' && copy?.kind === 'COPY' && run?.kind === 'RUN' && cmd?.kind === 'CMD');
  assert.ok(wd?.kind === 'WORKDIR' && add?.kind === 'ADD' && copy2?.kind === 'COPY');
  assert.deepEqual(env.env, [{ key: '<k>', value: '<v>', noDelim: false }]);
  // COPY --from is never expanded (BuildKit rejects variables there).
  assert.deepEqual([copy.from, copy.chown, copy.sources, copy.dest], ['$S', '<u>', ['<src>'], '<dst>']);
  assert.deepEqual(run.mounts, ['type=cache,target=<t>']);
  assert.deepEqual(run.command, ['echo $NOT']);
  assert.deepEqual(cmd.command, ['echo $NOT']);
  assert.equal(wd.path, '<w>');
  assert.equal(add.sourceContents[0]!.data, '<in_heredoc>\n');
  assert.equal(copy2.sourceContents[0]!.data, '$NOT\n', 'quoted heredoc is not expanded');
});

test('RUN --mount values are expanded field by field (a value with a comma stays one field)', () => {
  const run = parseDockerfile('FROM a\nRUN --mount=type=bind,source=$S,target=$T,ro x\n').stages[0]!.commands[0]!;
  const env: Record<string, string> = { S: 'a,b', T: '/t "q"' };
  const ex = expandInstruction(run, (w) => w.replace(/\$([A-Z])/g, (_, n: string) => env[n] ?? ''));
  assert.ok(ex.kind === 'RUN');
  assert.equal(ex.mounts[0], 'type=bind,"source=a,b","target=/t ""q""",ro');
  const m = parseMount(ex.mounts[0]!, (w) => w);
  assert.equal(m.source, 'a,b');
  assert.equal(m.target, '/t "q"');
  assert.equal(m.readOnly, true);
});

test('doc comments for stages', () => {
  const p = parseDockerfile('# build compiles the app\nFROM a AS build\n# other\nFROM b AS final\n');
  assert.equal(p.stages[0]!.from.docComment, 'compiles the app');
  assert.equal(p.stages[1]!.from.docComment, '');
});

test('doc comments for ARG and comments on instructions', () => {
  const p = parseDockerfile('FROM a\n# VERSION the version to build\nARG VERSION=1\n\n# free comment\n\nRUN x\n');
  const arg = p.stages[0]!.commands[0]!;
  assert.ok(arg.kind === 'ARG');
  assert.equal(arg.args[0]!.docComment, 'the version to build');
  assert.deepEqual(arg.comments, ['VERSION the version to build']);
  // BuildKit keeps comments across blank lines (only an empty `#` line resets them).
  assert.deepEqual(p.stages[0]!.commands[1]!.comments, ['free comment']);
});
