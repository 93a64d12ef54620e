/**
 * Builds: newest first, filtered by project, phase and branch, paginated with the API's cursor. The API filters
 * project and phase; the branch filter is applied here to whole API pages (up to 10 pages of 100 per screen), so
 * "Older" continues exactly where the scan stopped. Rows change live as builds do.
 */
import { useState } from 'preact/hooks';
import { PHASES, type Build, type Phase } from '../../../model.js';
import { duration, refName } from '../../shared/format.js';
import { api } from '../api.js';
import { Age, ErrorBox, Loading, PhaseBadge, Table } from '../components.js';
import { useBuildFeed, useResource, useTicker } from '../hooks.js';
import { navigate, withQuery, type Route } from '../router.js';

interface Page {
  builds: Build[];
  next: string | null;
}

const PAGE = 50;
const API_PAGE = 100;
const MAX_SCAN = 10;

export function matchesBranch(b: Build, branch: string): boolean {
  return !branch || refName(b.ref) === branch || b.ref === branch;
}

/** One screen of builds: API pages until PAGE matches, the end, or MAX_SCAN pages. */
async function loadPage(project: string, phase: string, branch: string, cursor: string): Promise<Page> {
  const out: Build[] = [];
  let next: string | null = cursor || null;
  for (let i = 0; i < (branch ? MAX_SCAN : 1); i++) {
    const url = withQuery('/api/v1/builds', {
      project,
      phase,
      limit: String(branch ? API_PAGE : PAGE),
      cursor: next ?? undefined,
    });
    const page = await api<Page>(url);
    out.push(...page.builds.filter((b) => matchesBranch(b, branch)));
    next = page.next;
    if (!next || out.length >= PAGE) break;
  }
  return { builds: out, next };
}

export function BuildsPage({ route }: { route: Route }) {
  const project = route.query.get('project') ?? '';
  const phase = route.query.get('phase') ?? '';
  const branch = route.query.get('branch') ?? '';
  const cursor = route.query.get('cursor') ?? '';
  const projects = useResource(() => api<{ projects: { name: string }[] }>('/api/v1/projects'), []);
  const res = useResource(() => loadPage(project, phase, branch, cursor), [project, phase, branch, cursor]);
  const [live, setLive] = useState<Map<string, Build>>(new Map());
  useTicker(30_000);
  useBuildFeed(
    project ? `project=${encodeURIComponent(project)}` : '',
    (b) => setLive((m) => new Map(m).set(b.id, b)),
    res.reload,
  );
  const go = (q: Record<string, string>): void =>
    navigate(withQuery('/builds', { project, phase, branch, ...q, cursor: q.cursor ?? '' }));

  let rows: Build[] = res.data ? res.data.builds.map((b) => live.get(b.id) ?? b) : [];
  if (res.data && !cursor) {
    // New builds that match the filters appear on the first page as they are queued.
    const shown = new Set(rows.map((b) => b.id));
    const fresh = [...live.values()]
      .filter((b) => !shown.has(b.id) && (!phase || b.phase === phase) && matchesBranch(b, branch))
      .filter((b) => !rows[0] || b.createdAt >= rows[0].createdAt)
      .sort((a, b) => (a.createdAt < b.createdAt ? 1 : -1));
    rows = [...fresh, ...rows];
  }
  if (phase) rows = rows.filter((b) => b.phase === phase || !live.has(b.id));

  return (
    <section>
      <h1>Builds</h1>
      <form
        class="filters"
        onSubmit={(e) => {
          e.preventDefault();
          const f = new FormData(e.currentTarget);
          go({
            project: String(f.get('project') ?? ''),
            phase: String(f.get('phase') ?? ''),
            branch: String(f.get('branch') ?? '').trim(),
          });
        }}
      >
        <label>
          Project
          <select name="project" value={project} onChange={(e) => go({ project: e.currentTarget.value })}>
            <option value="">all</option>
            {(projects.data?.projects ?? []).map((p) => (
              <option key={p.name} value={p.name}>
                {p.name}
              </option>
            ))}
          </select>
        </label>
        <label>
          Phase
          <select name="phase" value={phase} onChange={(e) => go({ phase: e.currentTarget.value })}>
            <option value="">all</option>
            {PHASES.map((p: Phase) => (
              <option key={p} value={p}>
                {p}
              </option>
            ))}
          </select>
        </label>
        <label>
          Branch
          <input
            key={branch}
            name="branch"
            type="search"
            defaultValue={branch}
            placeholder="e.g. main"
            spellcheck={false}
          />
        </label>
        <button type="submit">Filter</button>
      </form>
      {res.error ? <ErrorBox error={res.error} /> : null}
      {!res.data && !res.error ? <Loading /> : null}
      {res.data ? (
        rows.length === 0 ? (
          <p class="muted">No builds match.</p>
        ) : (
          <Table label="Builds">
            <thead>
              <tr>
                <th scope="col">Build</th>
                <th scope="col">Branch</th>
                <th scope="col">Commit</th>
                <th scope="col">Status</th>
                <th scope="col">Trigger</th>
                <th scope="col">Duration</th>
                <th scope="col">Created</th>
              </tr>
            </thead>
            <tbody>
              {rows.map((b) => (
                <tr key={b.id}>
                  <td>
                    <a href={`/builds/${encodeURIComponent(b.id)}`}>
                      {b.project}/{b.image} #{b.number}
                    </a>
                  </td>
                  <td class="ref">{refName(b.ref)}</td>
                  <td>
                    <code>{(b.commit ?? '').slice(0, 7)}</code>
                  </td>
                  <td>
                    <PhaseBadge phase={b.phase} />
                  </td>
                  <td>{b.trigger.type}</td>
                  <td>
                    {b.startedAt
                      ? duration((b.finishedAt ? Date.parse(b.finishedAt) : Date.now()) - Date.parse(b.startedAt))
                      : '–'}
                  </td>
                  <td>
                    <Age at={b.createdAt} />
                  </td>
                </tr>
              ))}
            </tbody>
          </Table>
        )
      ) : null}
      <nav class="pager" aria-label="Pages">
        {cursor ? <a href={withQuery('/builds', { project, phase, branch })}>Newest</a> : null}
        {res.data?.next ? (
          <a href={withQuery('/builds', { project, phase, branch, cursor: res.data.next })}>Older →</a>
        ) : null}
      </nav>
    </section>
  );
}
