/**
 * The OCI image model: JSON document shapes (as the image-spec defines them) and the small read-only interfaces
 * every part of kiln speaks. Modelled on go-containerregistry: an Image or Layer is lazy (nothing is fetched until
 * asked), memoized (ask twice, fetch once), immutable ("changing" an image makes a new one) and streams its bytes
 * (a layer is never a Buffer). Producers — the registry client, OCI layouts, docker archives, the local store and
 * the build engine — implement these; consumers — push, write-layout, inspect, the build engine — only read them.
 */
import type { Readable } from 'node:stream';

/** A content descriptor (image-spec descriptor.md). */
export interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  urls?: string[];
  annotations?: Record<string, string>;
  platform?: Platform;
  artifactType?: string;
}

/** A platform (image-spec image-index.md). */
export interface Platform {
  architecture: string;
  os: string;
  'os.version'?: string;
  'os.features'?: string[];
  variant?: string;
  features?: string[];
}

/** An image manifest (OCI or Docker schema 2; the shapes coincide for what kiln reads). */
export interface Manifest {
  schemaVersion: 2;
  mediaType?: string;
  artifactType?: string;
  config: Descriptor;
  layers: Descriptor[];
  subject?: Descriptor;
  annotations?: Record<string, string>;
}

/** An image index / Docker manifest list. */
export interface Index {
  schemaVersion: 2;
  mediaType?: string;
  artifactType?: string;
  manifests: Descriptor[];
  subject?: Descriptor;
  annotations?: Record<string, string>;
}

/** Healthcheck as stored in the image config (docker's field names; durations in nanoseconds). */
export interface HealthConfig {
  Test?: string[];
  Interval?: number;
  Timeout?: number;
  StartPeriod?: number;
  StartInterval?: number;
  Retries?: number;
}

/** The runtime part of an image config (`config` key). Docker-only fields are kept, BuildKit writes them too. */
export interface ContainerConfig {
  User?: string;
  ExposedPorts?: Record<string, Record<string, never>>;
  Env?: string[];
  Entrypoint?: string[] | null;
  Cmd?: string[] | null;
  Volumes?: Record<string, Record<string, never>>;
  WorkingDir?: string;
  Labels?: Record<string, string>;
  StopSignal?: string;
  ArgsEscaped?: boolean;
  Healthcheck?: HealthConfig;
  OnBuild?: string[] | null;
  Shell?: string[];
}

/** One history entry of an image config. */
export interface History {
  created?: string;
  created_by?: string;
  author?: string;
  comment?: string;
  empty_layer?: boolean;
}

/** The image configuration (image-spec config.md). */
export interface ImageConfig {
  created?: string;
  author?: string;
  architecture: string;
  os: string;
  'os.version'?: string;
  'os.features'?: string[];
  variant?: string;
  config?: ContainerConfig;
  rootfs: { type: 'layers'; diff_ids: string[] };
  history?: History[];
}

/**
 * A layer blob. `compressed()` yields the bytes exactly as stored/pushed (matching `digest()`),
 * `uncompressed()` the tar stream (matching `diffID()`). Each call returns a fresh stream.
 */
export interface Layer {
  digest(): Promise<string>;
  diffID(): Promise<string>;
  size(): Promise<number>;
  mediaType(): Promise<string>;
  compressed(): Promise<Readable>;
  uncompressed(): Promise<Readable>;
  /** Optional descriptor extras (urls, annotations) to carry into manifests. */
  descriptor?(): Promise<Descriptor>;
}

/**
 * A blob still being written: the file it is appended to until `written` settles, and what it turned out to be.
 * Why: a push can stream a layer to the registry while it is being compressed (src/registry/push.ts).
 */
export interface GrowingBlob {
  path: string;
  written: Promise<{ digest: string; size: number }>;
}

/** A single-platform image. */
export interface Image {
  mediaType(): Promise<string>;
  /** sha256 digest of rawManifest(). */
  digest(): Promise<string>;
  size(): Promise<number>;
  rawManifest(): Promise<Buffer>;
  manifest(): Promise<Manifest>;
  rawConfig(): Promise<Buffer>;
  config(): Promise<ImageConfig>;
  /** Layers in manifest order. */
  layers(): Promise<Layer[]>;
  /** Find a layer by its (compressed) digest. */
  layerByDigest(digest: string): Promise<Layer>;
}

/** A multi-platform image index. */
export interface ImageIndex {
  mediaType(): Promise<string>;
  digest(): Promise<string>;
  size(): Promise<number>;
  rawManifest(): Promise<Buffer>;
  indexManifest(): Promise<Index>;
  /** The child image for a manifest descriptor digest. */
  image(digest: string): Promise<Image>;
  /** A nested child index. */
  imageIndex(digest: string): Promise<ImageIndex>;
}
