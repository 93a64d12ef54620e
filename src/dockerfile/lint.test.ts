import { test } from 'node:test';
import assert from 'node:assert/strict';
import { formatLintWarning, isValidImageReference, lintDockerfile, parsePlatform, type LintOptions } from './lint.js';
import { DockerfileError } from './errors.js';

/** `Rule:line message` for each warning. */
function lint(text: string, opts: LintOptions = {}): string[] {
  return lintDockerfile(text, opts).warnings.map((w) => `${w.rule}:${w.line} ${w.message}`);
}

function rules(text: string, opts: LintOptions = {}): string[] {
  return lintDockerfile(text, opts).warnings.map((w) => `${w.rule}:${w.line}`);
}

test('a clean Dockerfile has no warnings', () => {
  const text = [
    'ARG BASE=alpine:3.20',
    'FROM ${BASE} AS build',
    'WORKDIR /src',
    'ENV GOFLAGS=-mod=vendor',
    'COPY . .',
    'RUN --mount=type=cache,target=/root/.cache echo build',
    'FROM scratch',
    'COPY --from=build /src/app /app',
    'ENTRYPOINT ["/app"]',
    'CMD ["--help"]',
  ].join('\n');
  assert.deepEqual(lint(text), []);
});

test('StageNameCasing and FromAsCasing', () => {
  assert.deepEqual(lint('FROM alpine AS Build\n'), ["StageNameCasing:1 Stage name 'Build' should be lowercase"]);
  assert.deepEqual(lint('FROM alpine as build\n'), ["FromAsCasing:1 'as' and 'FROM' keywords' casing do not match"]);
  assert.deepEqual(lint('from alpine AS build\n'), ["FromAsCasing:1 'AS' and 'from' keywords' casing do not match"]);
  assert.deepEqual(lint('from alpine as build\n'), []);
  // Mixed-case FROM is ConsistentInstructionCasing's business, not FromAsCasing's.
  assert.deepEqual(rules('From alpine as build\n'), ['ConsistentInstructionCasing:1']);
});

test('NoEmptyContinuation', () => {
  assert.deepEqual(lint('FROM a\nRUN echo \\\n\n  hi\n'), ['NoEmptyContinuation:4 Empty continuation line']);
});

test('ConsistentInstructionCasing follows the majority', () => {
  assert.deepEqual(lint('FROM a\nRUN x\nrun y\nCOPY a b\n'), [
    "ConsistentInstructionCasing:3 Command 'run' should match the case of the command majority (uppercase)",
  ]);
  assert.deepEqual(lint('from a\nrun x\nRUN y\ncopy a b\n'), [
    "ConsistentInstructionCasing:3 Command 'RUN' should match the case of the command majority (lowercase)",
  ]);
});

test('DuplicateStageName and ReservedStageName', () => {
  assert.deepEqual(lint('FROM a AS x\nFROM b AS x\n'), [
    'DuplicateStageName:2 Duplicate stage name "x", stage names should be unique',
  ]);
  assert.deepEqual(lint('FROM a AS scratch\nFROM b AS context\n'), [
    'ReservedStageName:1 Stage name should not use the same name as reserved stage "scratch"',
    'ReservedStageName:2 Stage name should not use the same name as reserved stage "context"',
  ]);
});

test('JSONArgsRecommended unless a SHELL is set', () => {
  assert.deepEqual(lint('FROM a\nCMD echo hi\n'), [
    'JSONArgsRecommended:2 JSON arguments recommended for CMD to prevent unintended behavior related to OS signals',
  ]);
  assert.deepEqual(rules('FROM a\nENTRYPOINT exec app\n'), ['JSONArgsRecommended:2']);
  assert.deepEqual(lint('FROM a\nSHELL ["/bin/bash", "-c"]\nCMD echo hi\n'), []);
  // SHELL is inherited from a parent stage.
  assert.deepEqual(lint('FROM a AS base\nSHELL ["/bin/bash", "-c"]\nFROM base\nCMD echo hi\n'), []);
});

test('MaintainerDeprecated', () => {
  assert.deepEqual(lint('FROM a\nMAINTAINER me\n'), [
    'MaintainerDeprecated:2 Maintainer instruction is deprecated in favor of using label',
  ]);
});

test('UndefinedArgInFrom and InvalidDefaultArgInFrom', () => {
  assert.deepEqual(lint('ARG VERSION=1\nFROM alpine:$VERSON\n'), [
    'InvalidDefaultArgInFrom:2 Default value for ARG alpine:$VERSON results in empty or invalid base image name',
    "UndefinedArgInFrom:2 FROM argument 'VERSON' is not declared (did you mean VERSION?)",
  ]);
  assert.deepEqual(lint('ARG TAG\nFROM alpine:${TAG}\n'), [
    'InvalidDefaultArgInFrom:2 Default value for ARG alpine:${TAG} results in empty or invalid base image name',
  ]);
  assert.deepEqual(lint('ARG TAG=3.20\nFROM alpine:${TAG}\n'), []);
  assert.deepEqual(lint('FROM --platform=$BUILDPLATFORM alpine\n'), []);
  assert.deepEqual(rules('FROM --platform=$BUILDPLATORM alpine\n'), ['UndefinedArgInFrom:1']);
  // Build args count as values.
  assert.deepEqual(lint('ARG TAG\nFROM alpine:${TAG}\n', { buildArgs: { TAG: '3' } }), [
    'InvalidDefaultArgInFrom:2 Default value for ARG alpine:${TAG} results in empty or invalid base image name',
  ]);
});

test('WorkdirRelativePath only for the first WORKDIR of a stage chain', () => {
  assert.deepEqual(lint('FROM a\nWORKDIR app\nWORKDIR sub\n'), [
    'WorkdirRelativePath:2 Relative workdir "app" can have unexpected results if the base image changes',
  ]);
  assert.deepEqual(lint('FROM a\nWORKDIR /app\nWORKDIR sub\n'), []);
  assert.deepEqual(lint('FROM a AS b\nWORKDIR /app\nFROM b\nWORKDIR sub\n'), []);
  assert.deepEqual(lint('FROM a\nARG D=/x\nWORKDIR $D\n'), []);
});

test('UndefinedVar in expanded words only', () => {
  assert.deepEqual(lint('FROM a\nCOPY $SRC /dst\n'), ["UndefinedVar:2 Usage of undefined variable '$SRC'"]);
  assert.deepEqual(lint('FROM a\nENV PATHS=/x\nCOPY $PATH_S /dst\n'), [
    "UndefinedVar:3 Usage of undefined variable '$PATH_S' (did you mean $PATHS?)",
  ]);
  // RUN/CMD command lines are not expanded by the builder.
  assert.deepEqual(lint('FROM a\nRUN echo $NOPE\n'), []);
  // Declared ARGs, ENV, PATH of the base image and ARGs without value are all fine.
  assert.deepEqual(lint('FROM a\nARG X\nARG Y=1\nENV Z=$Y\nWORKDIR /$X/$Y/$Z\nENV P=$PATH\n'), []);
  // Expansion of one ENV happens before any of its pairs is set.
  assert.deepEqual(rules('FROM a\nENV A=1 B=$A\n'), ['UndefinedVar:2']);
  // Inherited through stages, including declared ARGs without a value.
  assert.deepEqual(lint('FROM a AS base\nENV HOME_DIR=/h\nFROM base\nWORKDIR $HOME_DIR\n'), []);
  assert.deepEqual(lint('FROM a AS base\nARG V\nFROM base\nWORKDIR /$V\n'), []);
  assert.deepEqual(rules('FROM a AS base\nARG V\nFROM a\nWORKDIR /$V\n'), ['UndefinedVar:4']);
  // Heredoc sources are checked only when they expand.
  assert.deepEqual(rules('FROM a\nCOPY <<EOF /x\n$NOPE\nEOF\n'), ['UndefinedVar:2']);
  assert.deepEqual(rules("FROM a\nCOPY <<'EOF' /x\n$NOPE\nEOF\n"), []);
  // ARG defaults referring to undefined variables.
  assert.deepEqual(rules('FROM a\nARG A=$NOPE\n'), ['UndefinedVar:2']);
});

test('with a target only the stages it needs get dispatch-level checks', () => {
  const text = 'FROM a AS one\nCOPY $X /x\nFROM b AS two\nCOPY $Y /y\nFROM one AS three\n';
  assert.deepEqual(rules(text), ['UndefinedVar:2', 'UndefinedVar:4']);
  assert.deepEqual(rules(text, { target: 'three' }), ['UndefinedVar:2']);
  assert.deepEqual(rules(text, { target: 'two' }), ['UndefinedVar:4']);
});

test('MultipleInstructionsDisallowed reports the overridden instruction', () => {
  assert.deepEqual(lint('FROM a\nCMD ["a"]\nCMD ["b"]\nHEALTHCHECK NONE\nHEALTHCHECK NONE\n'), [
    'MultipleInstructionsDisallowed:2 Multiple CMD instructions should not be used in the same stage because only the last one will be used',
    'MultipleInstructionsDisallowed:4 Multiple HEALTHCHECK instructions should not be used in the same stage because only the last one will be used',
  ]);
  assert.deepEqual(lint('FROM a\nCMD ["a"]\nFROM b\nCMD ["b"]\n'), []);
});

test('LegacyKeyValueFormat', () => {
  assert.deepEqual(lint('FROM a\nENV A b\nLABEL x y\nENV B=c\n'), [
    'LegacyKeyValueFormat:2 "ENV key=value" should be used instead of legacy "ENV key value" format',
    'LegacyKeyValueFormat:3 "LABEL key=value" should be used instead of legacy "LABEL key value" format',
  ]);
});

test('SecretsUsedInArgOrEnv', () => {
  assert.deepEqual(lint('FROM a\nARG GITHUB_TOKEN\nENV DB_PASSWORD=x\n'), [
    'SecretsUsedInArgOrEnv:2 Do not use ARG or ENV instructions for sensitive data (ARG "GITHUB_TOKEN")',
    'SecretsUsedInArgOrEnv:3 Do not use ARG or ENV instructions for sensitive data (ENV "DB_PASSWORD")',
  ]);
  assert.deepEqual(lint('FROM a\nARG PUBLIC_KEY\nENV TOKENIZER=x\nENV SECRET_FILE=/run/s\n'), []);
});

test('FromPlatformFlagConstDisallowed and RedundantTargetPlatform', () => {
  assert.deepEqual(lint('FROM --platform=linux/amd64 alpine\n'), [
    'FromPlatformFlagConstDisallowed:1 FROM --platform flag should not use constant value "linux/amd64"',
  ]);
  assert.deepEqual(lint('FROM --platform=linux/amd64 alpine AS build-amd64\n'), []);
  assert.deepEqual(lint('FROM --platform=$TARGETPLATFORM alpine\n'), [
    'RedundantTargetPlatform:1 Setting platform to predefined $TARGETPLATFORM in FROM is redundant as this is the default behavior',
  ]);
});

test('CopyIgnoredFile with .dockerignore patterns', () => {
  const opts = { ignorePatterns: ['secret.txt', 'build'] };
  assert.deepEqual(lint('FROM a\nCOPY secret.txt build/out /x/\nCOPY ok /y\n', opts), [
    'CopyIgnoredFile:2 Attempting to Copy file "secret.txt" that is excluded by .dockerignore',
    'CopyIgnoredFile:2 Attempting to Copy file "build/out" that is excluded by .dockerignore',
  ]);
  assert.deepEqual(rules('FROM a\nADD ./secret.txt /x\n', opts), ['CopyIgnoredFile:2']);
  // Not for other stages' files, and not when there are exclusions.
  assert.deepEqual(lint('FROM a\nCOPY --from=b secret.txt /x\n', opts), []);
  assert.deepEqual(lint('FROM a\nCOPY secret.txt /x\n', { ignorePatterns: ['secret.txt', '!keep'] }), []);
  assert.deepEqual(lint('FROM a\nCOPY . /x\n', opts), []);
  assert.deepEqual(rules('FROM a\nCOPY . /x\n', { ignorePatterns: ['*'] }), ['CopyIgnoredFile:2']);
});

test('InvalidDefinitionDescription is experimental', () => {
  const text =
    '# check=experimental=InvalidDefinitionDescription\nFROM a\n# some comment\nARG VERSION=1\n# VERSION ok\nARG VERSION2\n';
  assert.deepEqual(lint(text.replace(/^.*\n/, '')), []);
  assert.deepEqual(lint(text), [
    'InvalidDefinitionDescription:4 Comment for ARG should follow the format: `# VERSION <description>`',
    'InvalidDefinitionDescription:6 Comment for ARG should follow the format: `# VERSION2 <description>`',
  ]);
  assert.deepEqual(
    rules('# check=experimental=all\n# base image\nFROM a AS base\n# base the base\nFROM base AS final\n'),
    ['InvalidDefinitionDescription:5'],
  );
});

test('ExposeProtoCasing and ExposeInvalidFormat', () => {
  assert.deepEqual(rules('FROM a\nEXPOSE 80/TCP 127.0.0.1:8080:80 443\n'), [
    'ExposeInvalidFormat:2',
    'ExposeProtoCasing:2',
  ]);
});

test('check directive: skip, error, and per-instruction overrides', () => {
  const text = 'FROM a AS Bad\nMAINTAINER me\n';
  assert.deepEqual(rules('# check=skip=StageNameCasing\n' + text), ['MaintainerDeprecated:3']);
  assert.deepEqual(rules('# check=skip=StageNameCasing,MaintainerDeprecated\n' + text), []);
  assert.deepEqual(rules('# check=skip=all\n' + text), []);
  const r = lintDockerfile('# check=error=true\n' + text);
  assert.equal(r.failed, true);
  assert.equal(r.check.error, true);
  assert.equal(lintDockerfile('# check=error=true\nFROM a\n').failed, false);
  assert.equal(lintDockerfile(text).failed, false);
  // A `# check=` comment right above an instruction adds skips for that instruction only.
  assert.deepEqual(rules('FROM a\n# check=skip=MaintainerDeprecated\nMAINTAINER me\nFROM b\nMAINTAINER you\n'), [
    'MaintainerDeprecated:5',
  ]);
  // File-level rules ignore instruction comments (BuildKit runs them with the global linter).
  assert.deepEqual(rules('FROM a AS x\n# check=skip=DuplicateStageName\nFROM b AS x\n'), ['DuplicateStageName:3']);
  assert.throws(
    () => lintDockerfile('# check=bogus=1\nFROM a\n'),
    (e: unknown) =>
      e instanceof DockerfileError && /failed to parse check options: invalid check option "bogus"/.test(e.message),
  );
});

test('formatLintWarning', () => {
  const [w] = lintDockerfile('FROM a\nMAINTAINER me\n').warnings;
  assert.equal(
    formatLintWarning(w!),
    'WARN: MaintainerDeprecated - Maintainer instruction is deprecated in favor of using label (line 2)',
  );
});

test('invalid files are errors, not warnings', () => {
  assert.throws(() => lintDockerfile('FROM a\nRUNN x\n'), DockerfileError);
});

test('image reference and platform helpers', () => {
  for (const ok of [
    'alpine',
    'alpine:3.20',
    'docker.io/library/alpine',
    'localhost:5000/a/b:t',
    'GHCR.io/org/x',
    `a@sha256:${'a'.repeat(64)}`,
  ]) {
    assert.ok(isValidImageReference(ok), ok);
  }
  for (const bad of ['', 'alpine:', 'Alpine', 'ghcr.io/Org/x', 'a b', ':tag', 'a'.repeat(64).replace(/a/g, 'f')]) {
    assert.ok(!isValidImageReference(bad), bad);
  }
  assert.deepEqual(parsePlatform('linux/arm64/v8'), { os: 'linux', architecture: 'arm64' });
  assert.deepEqual(parsePlatform('linux/x86_64'), { os: 'linux', architecture: 'amd64' });
  assert.equal(parsePlatform('linux//x'), undefined);
});
