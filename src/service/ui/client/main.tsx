/**
 * Entry of the web UI bundle: load who is signed in (a 401 goes back to the sign-in page), then render the app.
 * While the service cannot be reached the banner shows and the session is asked for again with backoff.
 */
import { render } from 'preact';
import { ApiDown, connection, loadSession } from './api.js';
import { App } from './app.js';
import { interceptLinks } from './router.js';
import './styles.css';

async function start(): Promise<void> {
  const root = document.getElementById('app') as HTMLElement;
  interceptLinks();
  for (let attempt = 0; ; attempt++) {
    try {
      const session = await loadSession();
      root.replaceChildren();
      render(<App session={session} />, root);
      return;
    } catch (e) {
      if (!(e instanceof ApiDown)) throw e;
      root.textContent = 'The kiln service cannot be reached. Retrying…';
      root.className = 'banner';
      connection.set(true);
      await new Promise((r) => window.setTimeout(r, Math.min(10_000, 1000 * 2 ** attempt)));
      root.className = '';
    }
  }
}

void start();
