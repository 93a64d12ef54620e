/** Projects: the newest build of each image and branch (status, digest, age), live. */
import { useRef } from 'preact/hooks';
import type { Build } from '../../../model.js';
import { refName, shortDigest } from '../../shared/format.js';
import { api } from '../api.js';
import { Age, Copyable, ErrorBox, Loading, PhaseBadge, Table } from '../components.js';
import { useBuildFeed, useResource, useTicker } from '../hooks.js';

interface OverviewProject {
  name: string;
  repository: string;
  registry: string;
  images: string[];
  latest: Build[];
}

export function ProjectsPage() {
  const res = useResource(() => api<{ projects: OverviewProject[] }>('/ui/overview'), []);
  useTicker(30_000);
  // Many events arrive together (phases, stages): reload at most once a second.
  const pending = useRef<number | undefined>(undefined);
  const soon = (): void => {
    if (pending.current !== undefined) return;
    pending.current = window.setTimeout(() => {
      pending.current = undefined;
      res.reload();
    }, 1000);
  };
  useBuildFeed('', soon, res.reload);
  if (res.error) return <ErrorBox error={res.error} />;
  if (!res.data) return <Loading />;
  const projects = res.data.projects;
  return (
    <section>
      <h1>Projects</h1>
      {projects.length === 0 ? (
        <p class="muted">No projects yet. Declare them in the server config or with kiln project apply.</p>
      ) : null}
      {projects.map((p) => (
        <article class="project" key={p.name}>
          <h2>
            <a href={`/builds?project=${encodeURIComponent(p.name)}`}>{p.name}</a>
          </h2>
          <p class="muted small-text">
            <span>{p.repository}</span> → <span>{p.registry}</span>
          </p>
          {p.latest.length === 0 ? (
            <p class="muted">No builds yet ({p.images.join(', ')}).</p>
          ) : (
            <Table label={`Latest builds of ${p.name}`}>
              <thead>
                <tr>
                  <th scope="col">Image</th>
                  <th scope="col">Branch</th>
                  <th scope="col">Status</th>
                  <th scope="col">Digest</th>
                  <th scope="col">Age</th>
                </tr>
              </thead>
              <tbody>
                {p.latest.map((b) => (
                  <tr key={b.id}>
                    <td>
                      <a href={`/builds/${encodeURIComponent(b.id)}`}>
                        {b.image} #{b.number}
                      </a>
                    </td>
                    <td class="ref">{refName(b.ref) || (b.commit ?? '').slice(0, 7)}</td>
                    <td>
                      <PhaseBadge phase={b.phase} />
                    </td>
                    <td>
                      {b.digest ? (
                        <Copyable value={b.digest} display={shortDigest(b.digest)} label="digest" />
                      ) : (
                        shortDigest(null)
                      )}
                    </td>
                    <td>
                      <Age at={b.finishedAt ?? b.startedAt ?? b.createdAt} />
                    </td>
                  </tr>
                ))}
              </tbody>
            </Table>
          )}
        </article>
      ))}
    </section>
  );
}
