// Stage graph (buildStageGraph / formatStageGraph) on the Dockerfiles under testdata/stages.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { parseDockerfile } from '../../src/dockerfile/convert.js';
import {
  buildStageGraph,
  formatStageGraph,
  stageGraphJSON,
  type StageGraphOptions,
} from '../../src/dockerfile/stages.js';
import { isKilnError } from '../../src/errors.js';

const dir = resolve(import.meta.dirname, 'testdata', 'stages');
const load = (name: string) => parseDockerfile(readFileSync(resolve(dir, name), 'utf8'));
const graph = (text: string, o: StageGraphOptions = {}) => buildStageGraph(parseDockerfile(text), o);
const amd64 = { os: 'linux', architecture: 'amd64' };

test('multi-stage: bases, deps, pruning, levels, images', () => {
  const g = buildStageGraph(load('multistage.Dockerfile'), { platform: amd64 });
  assert.equal(g.target, 4);
  assert.deepEqual(
    g.stages.map((s) => [s.displayName, s.base]),
    [
      ['builder', { kind: 'image', ref: 'golang:1.22' }],
      ['runtime-deps', { kind: 'image', ref: 'alpine:3.19' }],
      ['test', { kind: 'stage', index: 0 }],
      ['assets', { kind: 'scratch' }],
      ['stage-4', { kind: 'stage', index: 1 }],
    ],
  );
  assert.equal(g.stages[0]!.platform, 'linux/amd64');
  assert.deepEqual(
    g.stages[4]!.deps.map((d) => [d.stage, d.via, d.line]),
    [
      [1, 'FROM', 16],
      [0, 'COPY --from', 17],
      [3, 'COPY --from', 18],
      [3, 'RUN --mount', 19],
    ].filter((_, i) => i !== 3),
    'a stage is listed once even when referenced twice',
  );
  assert.deepEqual(g.order, [0, 1, 3, 4]);
  assert.deepEqual(g.levels, [[0, 1, 3], [4]]);
  assert.equal(g.stages[2]!.needed, false);
  assert.deepEqual(g.images, [
    { ref: 'golang:1.22', stages: [0] },
    { ref: 'alpine:3.19', stages: [1] },
    { ref: 'node:20', stages: [3] },
  ]);
  assert.deepEqual(g.warnings, []);

  const t = buildStageGraph(load('multistage.Dockerfile'), { target: 'TEST', platform: amd64 });
  assert.equal(t.target, 2);
  assert.deepEqual(t.order, [0, 2]);
  assert.deepEqual(t.levels, [[0], [2]]);
  assert.deepEqual(
    t.images.map((i) => i.ref),
    ['golang:1.22'],
  );
  assert.equal(t.globals.env.get('TARGETSTAGE'), 'TEST');
});

test('formatStageGraph prints one line per stage', () => {
  const g = buildStageGraph(load('multistage.Dockerfile'), { platform: amd64, buildArgs: new Map([['GO', '1.23']]) });
  assert.equal(
    formatStageGraph(g),
    [
      '#  NAME          BASE                             DEPENDS ON                                                 STATUS',
      '0  builder       image golang:1.23 [linux/amd64]  -                                                          needed (level 0)',
      '1  runtime-deps  image alpine:3.19                -                                                          needed (level 0)',
      '2  test          stage builder                    builder                                                    skipped',
      '3  assets        scratch                          image node:20 (COPY --from)                                needed (level 0)',
      '4  stage-4       stage runtime-deps               runtime-deps, builder (COPY --from), assets (COPY --from)  target (level 1)',
      '',
    ].join('\n'),
  );
});

test('cycles are errors (BuildKit message, first stage of the cycle)', () => {
  assert.throws(
    () => buildStageGraph(load('cycle.Dockerfile')),
    (e: unknown) =>
      isKilnError(e, 'DOCKERFILE_STAGE') && e.message === 'Dockerfile:2: circular dependency detected on stage: a',
  );
  assert.throws(() => graph('FROM alpine AS a\nCOPY --from=a /x /y\n'), /circular dependency detected on stage: a/);
});

test('forward references fail only when the referencing stage is needed', () => {
  assert.throws(
    () => buildStageGraph(load('forward.Dockerfile'), { target: 'a' }),
    (e: unknown) =>
      isKilnError(e, 'DOCKERFILE_STAGE') &&
      e.message === 'Dockerfile:2: cannot copy from stage "b", it needs to be defined before current stage "a"',
  );
  const g = buildStageGraph(load('forward.Dockerfile'));
  assert.deepEqual(g.order, [1]);
  assert.throws(
    () => graph('FROM alpine\nRUN --mount=from=later,target=/m true\nFROM alpine AS later\n', { target: 'stage-0' }),
    /target stage "stage-0" could not be found/,
  );
  assert.throws(
    () => graph('FROM alpine AS a\nRUN --mount=from=later,target=/m true\nFROM alpine AS later\nFROM a\n'),
    /Dockerfile:2: cannot mount from stage "later" to "\/m", stage needs to be defined before current command/,
  );
  // FROM only sees earlier stages: a later name is an image (as BuildKit).
  const f = graph('FROM later AS a\nFROM alpine AS later\n', { target: 'a' });
  assert.deepEqual(f.stages[0]!.base, { kind: 'image', ref: 'later' });
});

test('ONBUILD triggers of a base stage add dependencies', () => {
  const g = buildStageGraph(load('onbuild.Dockerfile'));
  assert.deepEqual(
    g.stages[3]!.deps.map((d) => [d.stage, d.via]),
    [
      [1, 'FROM'],
      [0, 'ONBUILD COPY --from'],
    ],
  );
  assert.deepEqual(g.order, [0, 1, 3]);
  assert.deepEqual(g.levels, [[0, 1], [3]]);
  assert.equal(g.stages[2]!.needed, false);
  assert.equal(g.stages[2]!.level, -1);
});

test('target not found suggests the closest stage name', () => {
  assert.throws(
    () => buildStageGraph(load('multistage.Dockerfile'), { target: 'bulder' }),
    (e: unknown) =>
      isKilnError(e, 'TARGET_NOT_FOUND') &&
      e.message === 'target stage "bulder" could not be found (did you mean builder?)' &&
      e.hint === 'stages: builder, runtime-deps, test, assets',
  );
  assert.throws(
    () => graph('FROM alpine\n', { target: 'x' }),
    (e: unknown) => isKilnError(e, 'TARGET_NOT_FOUND') && e.hint === 'the Dockerfile has no named stages',
  );
});

test('COPY --from: index, image, scratch, variables rejected, bad index', () => {
  const g = graph(
    'FROM alpine AS a\nFROM scratch\nCOPY --from=0 /a /a\nCOPY --from=busybox:1 /b /b\nCOPY --from=scratch / /\n',
  );
  assert.deepEqual(
    g.stages[1]!.deps.map((d) => d.stage),
    [0],
  );
  assert.deepEqual(g.images, [
    { ref: 'alpine', stages: [0] },
    { ref: 'busybox:1', stages: [1] },
  ]);
  assert.throws(
    () => graph('ARG X=a\nFROM alpine AS a\nFROM alpine\nCOPY --from=$X /a /a\n'),
    /Dockerfile:4: variable expansion is not supported for --from/,
  );
  assert.throws(() => graph('FROM alpine\nCOPY --from=5 /a /a\n'), /Dockerfile:2: invalid stage index 5/);
});

test('FROM expansion: global args, build-arg overrides, platform args, blank base, UndefinedArgInFrom', () => {
  const g = graph('ARG TAG=1\nFROM alpine:$TAG\nFROM --platform=$TARGETPLATFORM busybox:${VERSON:-x}\n', {
    buildArgs: new Map([
      ['TAG', '2'],
      ['UNUSED', 'u'],
      ['HTTP_PROXY', 'p'],
    ]),
    platform: { os: 'linux', architecture: 'arm64' },
  });
  assert.equal(g.stages[0]!.baseName, 'alpine:2');
  assert.equal(g.stages[1]!.platform, 'linux/arm64');
  assert.deepEqual(g.warnings, [
    { rule: 'UndefinedArgInFrom', message: "FROM argument 'VERSON' is not declared", line: 3 },
  ]);
  assert.deepEqual(g.unusedBuildArgs, ['UNUSED']);
  const w = graph('ARG VERSION=1\nFROM busybox:$VERSON\n', {}).warnings;
  assert.equal(w[0]?.message, "FROM argument 'VERSON' is not declared (did you mean VERSION?)");
  assert.throws(
    () => graph('ARG IMG\nFROM $IMG\n'),
    (e: unknown) =>
      isKilnError(e, 'DOCKERFILE_STAGE') && e.message === 'Dockerfile:2: base name ($IMG) should not be blank',
  );
  assert.throws(() => graph('FROM --platform=$NOPE alpine\n'), /empty platform value from expression \$NOPE/);
  assert.throws(
    () => graph('FROM alpine:${TAG\n'),
    (e: unknown) => isKilnError(e, 'DOCKERFILE_EXPANSION'),
  );
});

test('stage ARGs consume build args only in needed stages', () => {
  const text = 'FROM alpine AS a\nARG A\nFROM alpine AS b\nARG B\n';
  const args = new Map([
    ['A', '1'],
    ['B', '2'],
  ]);
  assert.deepEqual(graph(text, { buildArgs: args }).unusedBuildArgs, ['A']);
  assert.deepEqual(graph(text, { buildArgs: args, target: 'a' }).unusedBuildArgs, ['B']);
});

test('stageGraphJSON is plain data', () => {
  const g = buildStageGraph(load('multistage.Dockerfile'), { platform: amd64 });
  const j = JSON.parse(JSON.stringify(stageGraphJSON(g))) as {
    globalArgs: Record<string, string>;
    stages: { displayName: string; base: unknown; needed: boolean; line: number }[];
    levels: number[][];
  };
  assert.equal(j.globalArgs.GO, '1.22');
  assert.equal(j.globalArgs.TARGETPLATFORM, 'linux/amd64');
  assert.deepEqual(j.stages[2], {
    ...j.stages[2],
    displayName: 'test',
    base: { kind: 'stage', index: 0 },
    needed: false,
    line: 10,
  });
  assert.deepEqual(j.levels, [[0, 1, 3], [4]]);
});

test('duplicate stage names: FROM sees the latest earlier one, COPY --from the last one (BuildKit maps)', () => {
  const g = graph('FROM alpine AS x\nFROM busybox AS x\nFROM x AS y\nFROM scratch\nCOPY --from=x / /\n');
  assert.deepEqual(g.stages[2]!.base, { kind: 'stage', index: 1 });
  assert.deepEqual(
    g.stages[3]!.deps.map((d) => d.stage),
    [1],
  );
  assert.deepEqual(g.order, [1, 3]);
});

test('ONBUILD RUN --mount from a stage, index forms and mounts without from', () => {
  const g = graph(
    'FROM alpine AS cache\nFROM alpine AS base\nONBUILD RUN --mount=type=bind,from=cache,target=/c true\nFROM base\nRUN --mount=type=tmpfs,target=/t true\nCOPY --from=+0 /a /a\n',
  );
  assert.deepEqual(
    g.stages[2]!.deps.map((d) => [d.stage, d.via]),
    [
      [1, 'FROM'],
      [0, 'ONBUILD RUN --mount'],
    ],
  );
  assert.deepEqual(g.images, [{ ref: 'alpine', stages: [0, 1] }]);
  assert.throws(() => graph('FROM alpine\nCOPY --from=-1 /a /a\n'), /invalid stage index -1/);
  assert.throws(
    () => graph('FROM alpine AS a\nRUN --mount=from=$X,target=/x true\n'),
    /doesn't support variable expansion|variable expansion/,
  );
});

test('stage graph honours the # escape directive when expanding FROM', () => {
  const g = graph('# escape=`\nARG V=1\nFROM alpine:`$V$V\n');
  assert.equal(g.stages[0]!.baseName, 'alpine:$V1');
});
