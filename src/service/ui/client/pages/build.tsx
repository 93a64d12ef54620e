/**
 * One build: header (phase, reason, ref, commit, trigger), cancel/rerun for admins, the stages as a timeline, the
 * image's pull references, and the live log (streamed over fetch, see logstream.ts; virtualised, logview.ts) with
 * search, follow mode, and — for a failed build — the failing line highlighted and linked to `Dockerfile:N`.
 */
import { useEffect, useRef, useState } from 'preact/hooks';
import { FINAL_PHASES, type Build, type BuildStage } from '../../../model.js';
import { LogStreamDecoder, type LogStreamEnd } from '../../shared/logstream.js';
import { duration, findFailure, forgeLineUrl, pullRefs, refName, type Failure } from '../../shared/format.js';
import { ApiError, api, connection, currentSession, toSignIn } from '../api.js';
import { Age, Copyable, ErrorBox, Loading, NotFound, PhaseBadge } from '../components.js';
import { useBuildFeed, useResource, useTicker } from '../hooks.js';
import { LogView } from '../logview.js';
import { navigate } from '../router.js';

const isFinal = (b: Build): boolean => (FINAL_PHASES as readonly string[]).includes(b.phase);

export function BuildPage({ id }: { id: string }) {
  const res = useResource(() => api<Build>(`/api/v1/builds/${encodeURIComponent(id)}`), [id]);
  const [live, setLive] = useState<Build | undefined>(undefined);
  useEffect(() => setLive(undefined), [id]);
  useBuildFeed(`build=${encodeURIComponent(id)}`, setLive, res.reload);
  useTicker(1000);
  if (res.error?.status === 404) return <NotFound what={`There is no build ${id}.`} />;
  if (res.error) return <ErrorBox error={res.error} />;
  const fromApi = res.data;
  if (!fromApi) return <Loading />;
  // The newest of the two, except that an event never takes a final build back to an earlier phase.
  const b = live && live.id === fromApi.id && !(isFinal(fromApi) && !isFinal(live)) ? live : fromApi;
  return (
    <section class="build">
      <BuildHeader b={b} onChange={res.reload} />
      <Stages b={b} />
      <Images b={b} />
      <LogPanel b={b} key={b.id} onEnd={res.reload} />
    </section>
  );
}

function BuildHeader({ b, onChange }: { b: Build; onChange: () => void }) {
  const admin = currentSession()?.role === 'admin';
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<ApiError | undefined>(undefined);
  const act = (what: 'cancel' | 'rerun'): void => {
    setBusy(true);
    setError(undefined);
    api<Build>(`/api/v1/builds/${encodeURIComponent(b.id)}/${what}`, { method: 'POST' }).then(
      (r) => {
        setBusy(false);
        if (what === 'rerun') navigate(`/builds/${encodeURIComponent(r.id)}`);
        else onChange();
      },
      (e: unknown) => {
        setBusy(false);
        if (e instanceof ApiError) setError(e);
      },
    );
  };
  const took = b.startedAt
    ? duration((b.finishedAt ? Date.parse(b.finishedAt) : Date.now()) - Date.parse(b.startedAt))
    : '–';
  const t = b.trigger;
  return (
    <header class="build-header">
      <h1>
        <span>
          <a href={`/builds?project=${encodeURIComponent(b.project)}`}>{b.project}</a>/{b.image}{' '}
          <span class="muted">#{b.number}</span>
        </span>
        <PhaseBadge phase={b.phase} />
      </h1>
      {b.reason ? (
        <p class="reason" role={b.phase === 'failed' ? 'alert' : undefined}>
          {b.reason}
        </p>
      ) : null}
      <dl class="facts">
        <dt>Branch</dt>
        <dd class="ref">{refName(b.ref) || '–'}</dd>
        <dt>Commit</dt>
        <dd>
          <code>{b.commit ?? '–'}</code>
        </dd>
        <dt>Trigger</dt>
        <dd>
          {t.type}
          {t.by ? ` by ${t.by}` : ''}
          {t.forge ? ` (${t.forge})` : ''}
          {t.of ? (
            <>
              {' of '}
              <a href={`/builds/${encodeURIComponent(t.of)}`}>{t.of}</a>
            </>
          ) : null}
          {t.reason ? ` — ${t.reason}` : ''}
        </dd>
        <dt>Created</dt>
        <dd>
          <Age at={b.createdAt} />
        </dd>
        <dt>Duration</dt>
        <dd>{took}</dd>
      </dl>
      {admin ? (
        <div class="actions">
          {!isFinal(b) ? (
            <button type="button" class="danger" disabled={busy} onClick={() => act('cancel')}>
              Cancel build
            </button>
          ) : (
            <button type="button" disabled={busy} onClick={() => act('rerun')}>
              Rerun
            </button>
          )}
        </div>
      ) : null}
      {error ? <ErrorBox error={error} /> : null}
    </header>
  );
}

function Stages({ b }: { b: Build }) {
  if (!b.stages.length) return null;
  const t0 = Date.parse(b.startedAt ?? b.createdAt);
  const end = b.finishedAt ? Date.parse(b.finishedAt) : Date.now();
  const total = Math.max(1, end - t0);
  const len = (s: BuildStage): number =>
    s.durationMs ?? (s.status === 'running' && !isFinal(b) ? Date.now() - Date.parse(s.startedAt) : 0);
  return (
    <section aria-labelledby="stages-h">
      <h2 id="stages-h">Stages</h2>
      <ol class="timeline">
        {b.stages.map((s, i) => {
          const left = Math.min(100, Math.max(0, ((Date.parse(s.startedAt) - t0) / total) * 100));
          const width = Math.max(0.5, Math.min(100 - left, (len(s) / total) * 100));
          return (
            <li key={i} class={`stage stage-${s.status}`}>
              <span class="stage-name" title={s.name}>
                {s.name}
              </span>
              <span class="stage-bar" aria-hidden="true">
                <span style={{ left: `${left}%`, width: `${width}%` }} />
              </span>
              <span class="stage-time">
                {s.status === 'cached'
                  ? 'cached'
                  : s.status === 'running' && !isFinal(b)
                    ? 'running'
                    : duration(len(s))}
                {s.status === 'error' ? ' ✗' : ''}
              </span>
            </li>
          );
        })}
      </ol>
    </section>
  );
}

function Images({ b }: { b: Build }) {
  // Only what was pushed: a build that did not finish has planned tags, not an image.
  if (!b.digest) return null;
  const refs = pullRefs(b);
  return (
    <section aria-labelledby="images-h">
      <h2 id="images-h">Image</h2>
      <ul class="pull-refs">
        {refs.map((r) => (
          <li key={r}>
            <Copyable value={r} label={r.includes('@') ? 'pull reference by digest' : 'pull reference'} />
          </li>
        ))}
      </ul>
    </section>
  );
}

/** The log: follows the stream until `end`, reconnecting (skipping what it has) if the connection drops. */
function LogPanel({ b, onEnd }: { b: Build; onEnd: () => void }) {
  const host = useRef<HTMLDivElement>(null);
  const viewRef = useRef<LogView | undefined>(undefined);
  const [, setTick] = useState(0);
  const [following, setFollowing] = useState(true);
  const [ended, setEnded] = useState<LogStreamEnd | undefined>(undefined);
  const [failure, setFailure] = useState<Failure | undefined>(undefined);
  const [query, setQuery] = useState('');
  const project = useResource(
    () => api<{ repository: string }>(`/api/v1/projects/${encodeURIComponent(b.project)}`),
    [b.project],
  );
  const build = useRef(b);
  build.current = b;

  useEffect(() => {
    if (!host.current) return;
    const view = new LogView(host.current, {
      follow: setFollowing,
      change: () => setTick((t) => (t + 1) & 0xffff),
    });
    viewRef.current = view;
    const ac = new AbortController();
    const landOnFailure = (reason: string | null): void => {
      const f = findFailure(view.held(), reason);
      if (f.line >= 0) {
        view.setFailing(view.dropped + f.line);
        f.line += view.dropped;
      }
      setFailure(f);
    };
    const pickFromHash = (): boolean => {
      const m = /^#L(\d+)$/.exec(location.hash);
      if (!m) return false;
      view.pick(Number(m[1]) - 1);
      return true;
    };
    void (async () => {
      let received = 0;
      for (let attempt = 0; !ac.signal.aborted; attempt++) {
        let res: Response;
        try {
          res = await fetch(`/api/v1/builds/${encodeURIComponent(b.id)}/log?follow=1`, {
            signal: ac.signal,
            credentials: 'same-origin',
            cache: 'no-store',
          });
        } catch {
          if (ac.signal.aborted) return;
          connection.set(true);
          await sleep(Math.min(10_000, 1000 * 2 ** attempt));
          continue;
        }
        if (res.status === 401) toSignIn();
        if (!res.ok || !res.body) {
          connection.set(res.status >= 502);
          await sleep(Math.min(10_000, 1000 * 2 ** attempt));
          continue;
        }
        connection.set(false);
        attempt = 0;
        const reader = res.body.getReader();
        const text = new TextDecoder();
        const decoder = new LogStreamDecoder();
        let skip = received;
        try {
          for (;;) {
            const { value, done } = await reader.read();
            if (done) break;
            const chunk = decoder.push(text.decode(value, { stream: true }));
            let lines = chunk.lines;
            if (skip > 0) {
              const k = Math.min(skip, lines.length);
              lines = lines.slice(k);
              skip -= k;
            }
            received += lines.length;
            view.append(lines);
            if (chunk.end) {
              setEnded(chunk.end);
              if (!chunk.end.shutdown) {
                if (chunk.end.phase === 'failed' || chunk.end.phase === 'timed-out') landOnFailure(chunk.end.reason);
                else if (!pickFromHash() && isFinal(build.current)) view.toEnd();
                onEnd();
                return;
              }
              break;
            }
          }
        } catch {
          if (ac.signal.aborted) return;
        }
        // The stream ended early (the service stopped or restarted): reconnect and skip what we have.
        await sleep(1000);
      }
    })();
    return () => {
      ac.abort();
      view.root.remove();
      viewRef.current = undefined;
    };
    // The view lives as long as this build's panel (keyed by id).
  }, []);

  const view = viewRef.current;
  const count = view?.matches.length ?? 0;
  const dockerLink =
    failure?.file && failure.lineNo !== undefined && project.data
      ? forgeLineUrl(project.data.repository, b.commit, failure.file, failure.lineNo)
      : undefined;
  return (
    <section aria-labelledby="log-h" class="log-panel">
      <div class="log-toolbar">
        <h2 id="log-h">Log</h2>
        <form
          class="log-search"
          role="search"
          onSubmit={(e) => {
            e.preventDefault();
            view?.step(1);
          }}
        >
          <input
            type="search"
            placeholder="Search the log"
            aria-label="Search the log"
            value={query}
            onInput={(e) => {
              const q = e.currentTarget.value;
              setQuery(q);
              view?.search(q);
            }}
            onKeyDown={(e) => {
              if (e.key === 'Enter' && e.shiftKey) {
                e.preventDefault();
                view?.step(-1);
              }
            }}
          />
          <span class="muted match-count" aria-live="polite">
            {query ? `${count ? (view?.current ?? 0) + 1 : 0} of ${count}` : ''}
          </span>
          <button
            type="button"
            class="small"
            disabled={!count}
            onClick={() => view?.step(-1)}
            aria-label="Previous match"
          >
            ↑
          </button>
          <button type="button" class="small" disabled={!count} onClick={() => view?.step(1)} aria-label="Next match">
            ↓
          </button>
        </form>
        <button
          type="button"
          class={`small follow ${following ? 'on' : ''}`}
          aria-pressed={following}
          onClick={() => (following ? view?.setFollow(false) : view?.toEnd())}
        >
          {following ? 'Following' : 'Follow'}
        </button>
        <a class="small-text" href={`/api/v1/builds/${encodeURIComponent(b.id)}/log`} target="_blank" rel="noopener">
          Raw log
        </a>
      </div>
      {failure && (failure.line >= 0 || failure.file) ? (
        <p class="failure" role="note">
          Failed
          {failure.file && failure.lineNo !== undefined ? (
            <>
              {' at '}
              {dockerLink ? (
                <a href={dockerLink} target="_blank" rel="noopener noreferrer" class="dockerfile-link">
                  {failure.file}:{failure.lineNo}
                </a>
              ) : (
                <code class="dockerfile-link">
                  {failure.file}:{failure.lineNo}
                </code>
              )}
            </>
          ) : null}
          {failure.line >= 0 ? (
            <>
              {' — '}
              <a href={`#L${failure.line + 1}`} onClick={(e) => (e.preventDefault(), view?.setFailing(failure.line))}>
                log line {failure.line + 1}
              </a>
            </>
          ) : null}
        </p>
      ) : null}
      <div ref={host} class="log-host" />
      <p class="muted small-text log-status">
        {view ? `${view.total.toLocaleString()} lines` : ''}
        {view && view.dropped ? ` (the first ${view.dropped.toLocaleString()} are not kept here: see the raw log)` : ''}
        {ended
          ? ended.shutdown
            ? ' · the service stopped; reconnecting'
            : ` · ended: ${ended.phase ?? 'deleted'}`
          : ' · live'}
      </p>
    </section>
  );
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => window.setTimeout(r, ms));
}
