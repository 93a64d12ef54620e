// Child process for test/integration/oci-store.test.ts: puts N busybox-derived images into $KILN_HOME's store
// under `<prefix>:<i>` while another process does the same, then removes every other one.
import { LocalStore } from '../../src/oci/store.js';
import { makeBusyboxImage } from '../../test/helpers/images.js';

const [prefix, count] = [process.argv[2]!, Number(process.argv[3])];
const store = await LocalStore.open();
for (let i = 0; i < count; i++) {
  const img = await makeBusyboxImage({ extraFiles: [{ path: `etc/${prefix}-${i}`, content: `${prefix} ${i}\n` }] });
  await store.put(img, [`${prefix}:${i}`]);
}
// graceMs 0: collect at once, racing the other process's puts (protected by put's re-check under the lock).
for (let i = 0; i < count; i += 2) await store.remove(`${prefix}:${i}`, { graceMs: 0 });
