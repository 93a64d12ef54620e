/** Watched base images (`GET /api/v1/bases`): current digest, last check, warnings, and the images built on them. */
import { refName, shortDigest } from '../../shared/format.js';
import { api } from '../api.js';
import { Age, Copyable, ErrorBox, Loading, Table } from '../components.js';
import { useResource, useTicker } from '../hooks.js';

interface WatchedBase {
  name: string;
  digest: string | null;
  checkedAt: string | null;
  warning: string | null;
  dependents: { project: string; image: string; ref: string; digest: string }[];
}

export function BasesPage() {
  const res = useResource(() => api<{ bases: WatchedBase[] }>('/api/v1/bases'), []);
  useTicker(30_000);
  if (res.error?.status === 404) {
    return (
      <section>
        <h1>Base images</h1>
        <p class="notice">Base-image tracking is not available on this server.</p>
      </section>
    );
  }
  if (res.error) return <ErrorBox error={res.error} />;
  if (!res.data) return <Loading />;
  return (
    <section>
      <h1>Base images</h1>
      {res.data.bases.length === 0 ? (
        <p class="muted">No base images watched yet: they appear after the first successful builds.</p>
      ) : (
        <Table label="Base images">
          <thead>
            <tr>
              <th scope="col">Base</th>
              <th scope="col">Current digest</th>
              <th scope="col">Checked</th>
              <th scope="col">Dependents</th>
            </tr>
          </thead>
          <tbody>
            {res.data.bases.map((base) => (
              <tr key={base.name}>
                <td>
                  <code>{base.name}</code>
                  {base.warning ? (
                    <div class="warning" role="note">
                      {base.warning}
                    </div>
                  ) : null}
                </td>
                <td>
                  {base.digest ? (
                    <Copyable value={base.digest} display={shortDigest(base.digest)} label="digest" />
                  ) : (
                    '–'
                  )}
                </td>
                <td>
                  <Age at={base.checkedAt} />
                </td>
                <td>
                  <ul class="plain">
                    {base.dependents.map((d) => (
                      <li key={`${d.project}/${d.image}/${d.ref}`}>
                        <a
                          href={`/builds?project=${encodeURIComponent(d.project)}&branch=${encodeURIComponent(refName(d.ref))}`}
                        >
                          {d.project}/{d.image}
                        </a>{' '}
                        <span class="ref">{refName(d.ref)}</span>{' '}
                        {base.digest && d.digest !== base.digest ? (
                          <span class="phase phase-queued" title={`built on ${d.digest}`}>
                            base changed
                          </span>
                        ) : (
                          <span class="muted">up to date</span>
                        )}
                      </li>
                    ))}
                  </ul>
                </td>
              </tr>
            ))}
          </tbody>
        </Table>
      )}
    </section>
  );
}
