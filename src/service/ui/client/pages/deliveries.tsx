/**
 * Webhook deliveries (`GET /api/v1/deliveries`): each delivery's forge, event, ref, signature verdict, what it
 * did and the builds it queued; admins can redeliver accepted ones. A service without the receivers answers 404
 * for the endpoint: the page says so.
 */
import { useState } from 'preact/hooks';
import { refName } from '../../shared/format.js';
import { ApiError, api, currentSession } from '../api.js';
import { Age, ErrorBox, Loading, Table } from '../components.js';
import { useResource, useTicker } from '../hooks.js';

interface Delivery {
  id: number | null;
  project: string;
  forge: string;
  deliveryId: string;
  event: string;
  ref: string | null;
  commit: string | null;
  outcome: string;
  receivedAt: string;
  buildGroup: string | null;
  builds: string[];
}

export function DeliveriesPage() {
  const res = useResource(() => api<{ deliveries: Delivery[] }>('/api/v1/deliveries?limit=200'), []);
  const [note, setNote] = useState<string | undefined>(undefined);
  const [error, setError] = useState<ApiError | undefined>(undefined);
  useTicker(30_000);
  const admin = currentSession()?.role === 'admin';
  if (res.error?.status === 404) {
    return (
      <section>
        <h1>Deliveries</h1>
        <p class="notice" role="status">
          Webhook deliveries are not available on this server (its webhook receivers are not installed).
        </p>
      </section>
    );
  }
  if (res.error) return <ErrorBox error={res.error} />;
  if (!res.data) return <Loading />;
  const redeliver = (id: number): void => {
    setError(undefined);
    api<{ builds?: string[] }>(`/api/v1/deliveries/${id}/redeliver`, { method: 'POST' }).then(
      (r) => {
        setNote(`Delivery ${id} redelivered${r?.builds?.length ? `: ${r.builds.length} build(s) queued` : ''}.`);
        res.reload();
      },
      (e: unknown) => e instanceof ApiError && setError(e),
    );
  };
  return (
    <section>
      <h1>Deliveries</h1>
      {note ? (
        <p class="notice" role="status">
          {note}
        </p>
      ) : null}
      {error ? <ErrorBox error={error} /> : null}
      {res.data.deliveries.length === 0 ? (
        <p class="muted">No webhook deliveries yet.</p>
      ) : (
        <Table label="Webhook deliveries">
          <thead>
            <tr>
              <th scope="col">Received</th>
              <th scope="col">Project</th>
              <th scope="col">Event</th>
              <th scope="col">Ref</th>
              <th scope="col">Signature</th>
              <th scope="col">Outcome</th>
              <th scope="col">Builds</th>
              {admin ? <th scope="col">Action</th> : null}
            </tr>
          </thead>
          <tbody>
            {res.data.deliveries.map((d, i) => (
              <tr key={`${d.id ?? 'r'}-${d.deliveryId}-${i}`}>
                <td>
                  <Age at={d.receivedAt} />
                </td>
                <td>{d.project}</td>
                <td>
                  {d.forge} <span class="muted">{d.event}</span>
                </td>
                <td class="ref">{d.ref ? refName(d.ref) : '–'}</td>
                <td>
                  {d.id === null ? (
                    <span class="phase phase-failed">rejected</span>
                  ) : (
                    <span class="phase phase-succeeded">verified</span>
                  )}
                </td>
                <td>{d.outcome}</td>
                <td>
                  {d.builds.length
                    ? d.builds.map((id) => (
                        <a key={id} href={`/builds/${encodeURIComponent(id)}`} class="chip">
                          {id}
                        </a>
                      ))
                    : '–'}
                </td>
                {admin ? (
                  <td>
                    {d.id !== null ? (
                      <button type="button" class="small" onClick={() => redeliver(d.id as number)}>
                        Redeliver
                      </button>
                    ) : null}
                  </td>
                ) : null}
              </tr>
            ))}
          </tbody>
        </Table>
      )}
    </section>
  );
}
