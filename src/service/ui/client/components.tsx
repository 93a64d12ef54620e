/** Small shared pieces of the pages. Every value is rendered as text by Preact (never as markup). */
import type { ComponentChildren } from 'preact';
import { useState } from 'preact/hooks';
import type { Phase } from '../../model.js';
import { age } from '../shared/format.js';
import type { ApiError } from './api.js';

export function PhaseBadge({ phase }: { phase: Phase | string }) {
  return <span class={`phase phase-${phase.replace(/[^a-z-]/g, '')}`}>{phase}</span>;
}

/** "5 min ago", with the exact time as a tooltip. */
export function Age({ at }: { at: string | null | undefined }) {
  if (!at) return <span>–</span>;
  return (
    <time dateTime={at} title={new Date(at).toLocaleString()}>
      {age(at)}
    </time>
  );
}

/** A value with a copy button (pull references, digests). */
export function Copyable({ value, label, display }: { value: string; label?: string; display?: string }) {
  const [done, setDone] = useState(false);
  const copy = (): void => {
    const ok = (): void => {
      setDone(true);
      window.setTimeout(() => setDone(false), 1500);
    };
    if (navigator.clipboard) {
      navigator.clipboard.writeText(value).then(ok, () => undefined);
    }
  };
  return (
    <span class="copyable">
      <code title={display ? value : undefined}>{display ?? value}</code>
      <button type="button" class="small" onClick={copy} aria-label={`Copy ${label ?? value}`}>
        {done ? 'Copied' : 'Copy'}
      </button>
    </span>
  );
}

export function Loading() {
  return (
    <p class="muted" aria-busy="true">
      Loading…
    </p>
  );
}

export function ErrorBox({ error }: { error: ApiError }) {
  return (
    <div class="error-box" role="alert">
      <strong>{error.message}</strong>
      {error.hint ? <div class="muted">{error.hint}</div> : null}
    </div>
  );
}

export function NotFound({ what }: { what?: string }) {
  return (
    <section class="not-found">
      <h1>404 — not found</h1>
      <p>{what ?? 'There is no page here.'}</p>
      <p>
        <a href="/builds">All builds</a> · <a href="/projects">Projects</a>
      </p>
    </section>
  );
}

/** A table that scrolls sideways on narrow screens instead of squeezing its columns. */
export function Table({ children, label }: { children: ComponentChildren; label: string }) {
  return (
    <div class="table-wrap" role="region" aria-label={label} tabIndex={0}>
      <table>{children}</table>
    </div>
  );
}
