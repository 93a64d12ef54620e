/**
 * Directories whose children are whole file trees (snapshots, extracted layers) made by kiln.
 *
 * ext4 puts a new file in its parent directory's block group and, without a journal (common for node-local disks),
 * skips every free inode there that was freed in the last 5 s — 300 s while its inode-table block is still dirty —
 * scanning from the start of the group for each new file. Right after a large deletion (a cache GC, a previous
 * build's temp dirs, a pruned home) creating the 5,000 files of a `COPY src/` in that group costs O(n²) kernel
 * time: measured here 1.1 s of 2.4 s for a whole cold build. Marking the parent with ext4's "top directory" flag
 * (`chattr +T`) makes the Orlov allocator place each child tree in a group with above-average free inodes instead,
 * away from the freshly freed ones. A hint only: where `chattr` or the flag is not available nothing changes.
 */
import { execFile } from 'node:child_process';
import { mkdir } from 'node:fs/promises';

/**
 * `mkdir -p dir` (mode for what is created); when this call created `dir` itself, mark it ext4 top-directory so
 * the trees kiln creates in it spread over the filesystem. Failures to mark are ignored (other filesystems).
 */
export async function ensureSpreadDir(dir: string, mode?: number): Promise<void> {
  const created = await mkdir(dir, mode === undefined ? { recursive: true } : { recursive: true, mode });
  if (created === undefined || process.env.KILN_SPREAD_DIRS === '0') return;
  await new Promise<void>((resolve) => {
    execFile('chattr', ['+T', dir], { timeout: 5000 }, () => resolve());
  });
}
