/**
 * Child process of the store's `kill -9` test: writes build groups and transitions to the database given as
 * argv[2] as fast as it can, printing one line per committed transaction (`<group> <id>,<id>,<id>`) until the
 * parent kills it. Each transaction is made large (many changed paths) so the kill often lands inside one.
 */
import { Store } from '../store.js';
import type { Project } from '../../model.js';

const file = process.argv[2];
if (!file) throw new Error('usage: crash-writer.ts DB');
const store = Store.open(file);
store.upsertProject({ name: 'crash', images: [] } as unknown as Project);
const paths = Array.from({ length: 400 }, (_, i) => `src/module-${i}/file-${i}.ts`);
for (let i = 0; ; i++) {
  const builds = store.createBuilds(
    ['api', 'web', 'worker'].map((image) => ({
      project: 'crash',
      image,
      ref: 'refs/heads/main',
      commit: i.toString(16).padStart(40, '0'),
      trigger: { type: 'webhook' as const },
      changedPaths: paths,
    })),
  );
  const first = builds[0];
  if (!first) throw new Error('no build created');
  store.updateBuild(first.id, { phase: 'fetching' });
  process.stdout.write(`${first.group} ${builds.map((b) => b.id).join(',')}\n`);
}
