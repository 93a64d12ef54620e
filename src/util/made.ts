/**
 * Digests of the blobs this process made: layer blobs it wrote and image configs it exported. No registry is likely
 * to have such a blob unless kiln pushed it there — which the origin index records — so a push may skip the HEAD
 * that asks whether the registry has it (one round trip less per new blob; src/registry/push.ts, blobs ≤ 1 MiB). A
 * wrong guess costs an upload of bytes the registry already had, never a wrong result.
 */
const made = new Set<string>();

/** Note a blob this process made (a layer blob just written, a config just exported). */
export function noteMadeBlob(digest: string): void {
  made.add(digest);
}

/** Did this process make that blob? */
export function madeHere(digest: string): boolean {
  return made.has(digest);
}
