/**
 * Media types kiln reads and writes. Registries and tools distinguish OCI and Docker schema-2 documents only by
 * these strings, so they are constants in one place rather than literals scattered through the code.
 */
export const MediaType = {
  OCIManifest: 'application/vnd.oci.image.manifest.v1+json',
  OCIIndex: 'application/vnd.oci.image.index.v1+json',
  OCIConfig: 'application/vnd.oci.image.config.v1+json',
  OCILayer: 'application/vnd.oci.image.layer.v1.tar',
  OCILayerGzip: 'application/vnd.oci.image.layer.v1.tar+gzip',
  OCILayerZstd: 'application/vnd.oci.image.layer.v1.tar+zstd',
  OCIEmptyJSON: 'application/vnd.oci.empty.v1+json',
  DockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
  DockerManifestList: 'application/vnd.docker.distribution.manifest.list.v2+json',
  DockerConfig: 'application/vnd.docker.container.image.v1+json',
  DockerLayerGzip: 'application/vnd.docker.image.rootfs.diff.tar.gzip',
  DockerForeignLayerGzip: 'application/vnd.docker.image.rootfs.foreign.diff.tar.gzip',
  DockerManifestV1Signed: 'application/vnd.docker.distribution.manifest.v1+prettyjws',
} as const;

export type MediaTypeValue = (typeof MediaType)[keyof typeof MediaType];

/** True for single-image manifests (OCI or Docker schema 2). */
export function isImageManifest(mt: string | undefined): boolean {
  return mt === MediaType.OCIManifest || mt === MediaType.DockerManifest;
}

/** True for multi-platform indexes (OCI index or Docker manifest list). */
export function isIndex(mt: string | undefined): boolean {
  return mt === MediaType.OCIIndex || mt === MediaType.DockerManifestList;
}

/** Layer compression implied by a layer media type. */
export function layerCompression(mt: string): 'gzip' | 'zstd' | 'none' {
  if (mt.endsWith('+gzip') || mt.endsWith('.tar.gzip')) return 'gzip';
  if (mt.endsWith('+zstd')) return 'zstd';
  return 'none';
}

/** Accept header for manifest GETs: every manifest type kiln understands, preferred first. */
export const MANIFEST_ACCEPT = [
  MediaType.OCIIndex,
  MediaType.DockerManifestList,
  MediaType.OCIManifest,
  MediaType.DockerManifest,
].join(', ');
