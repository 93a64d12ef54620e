/**
 * The strategy seam: a frontend decides the steps of an image, the engine runs them (BuildKit's frontend → LLB
 * split). A frontend turns its input (a Dockerfile; a source tree and an S2I builder image; later buildpacks or
 * the Node.js builder) into the engine's typed instruction list — stages of `src/dockerfile/instructions.ts` — plus
 * optional work around the engine run (S2I saves its artifacts from the finished image). There is one engine: every
 * frontend gets the same sandbox, snapshotter, layer writer, cache and publisher.
 *
 * The Dockerfile frontend is `dockerfileFrontend` (src/engine/build.ts); S2I's is `s2iFrontend` (src/strategies/s2i/frontend.ts).
 */
import type { ArgInstruction, Stage } from '../dockerfile/instructions.js';
import type { BuildOptions } from './options.js';
import type { EngineResult } from './engine.js';
import type { BaseResolver, Executor, ProgressSink, Snapshotter } from './ports.js';

/** What a frontend is given. */
export interface FrontendInput {
  options: BuildOptions;
  /** The Dockerfile text and display name the context loader found (frontends that generate steps ignore it). */
  dockerfile: { text: string; file: string };
  /** The loaded build context. */
  contextDir: string;
  progress: ProgressSink;
  /** Resolves images the frontend needs to look at (S2I's builder and runtime images: labels, USER). */
  bases: BaseResolver;
}

/** The engine's services a frontend may use around the run (never to build layers of its own). */
export interface FrontendTools {
  snapshotter: Snapshotter;
  executor: Executor;
  progress: ProgressSink;
  /** Private scratch dir of this build (removed after it). */
  tmpDir: string;
  signal?: AbortSignal;
}

/** What the engine runs. */
export interface FrontendPlan {
  /** The stages, in typed instructions (words unexpanded: the engine expands them like BuildKit). */
  stages: Stage[];
  /** ARGs before the first FROM. */
  metaArgs: ArgInstruction[];
  /** The name messages use (`Dockerfile:4: …`). */
  file: string;
  /** The escape token when not `\`. */
  escape?: string;
  /** The stage to build (default: the last). */
  target?: string;
  /** After a successful engine run, before the image is exported (e.g. S2I's save-artifacts). */
  afterEngine?: (res: EngineResult, tools: FrontendTools) => Promise<void>;
}

/** "How the steps of an image are decided". */
export interface Frontend {
  /** `dockerfile`, `s2i`, … (the service's `strategy:`). */
  readonly name: string;
  plan(input: FrontendInput): Promise<FrontendPlan>;
}
