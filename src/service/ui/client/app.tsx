/** The frame of every page: skip link, navigation, who is signed in, the "service unreachable" banner, the page. */
import { useEffect, useState } from 'preact/hooks';
import { connection, signOut, type Session } from './api.js';
import { NotFound } from './components.js';
import { BasesPage } from './pages/bases.js';
import { BuildPage } from './pages/build.js';
import { BuildsPage } from './pages/builds.js';
import { DeliveriesPage } from './pages/deliveries.js';
import { ProjectsPage } from './pages/projects.js';
import { useRoute, type Route } from './router.js';

const NAV: [string, string][] = [
  ['/projects', 'Projects'],
  ['/builds', 'Builds'],
  ['/deliveries', 'Deliveries'],
  ['/bases', 'Bases'],
];

function page(route: Route) {
  const m = /^\/builds\/([^/]+)$/.exec(route.path);
  if (m) return <BuildPage id={decodeURIComponent(m[1] as string)} />;
  switch (route.path) {
    case '/projects':
      return <ProjectsPage />;
    case '/builds':
      return <BuildsPage route={route} />;
    case '/deliveries':
      return <DeliveriesPage />;
    case '/bases':
      return <BasesPage />;
    default:
      return <NotFound />;
  }
}

function Banner() {
  const [down, setDown] = useState(connection.down);
  useEffect(() => {
    const l = (d: boolean): void => setDown(d);
    connection.listeners.add(l);
    return () => void connection.listeners.delete(l);
  }, []);
  if (!down) return null;
  return (
    <div class="banner" role="alert">
      The kiln service cannot be reached. Retrying…
    </div>
  );
}

export function App({ session }: { session: Session }) {
  const route = useRoute();
  useEffect(() => {
    const m = /^\/builds\/([^/]+)$/.exec(route.path);
    const title = NAV.find(([p]) => p === route.path)?.[1] ?? (m ? `Build ${decodeURIComponent(m[1] as string)}` : '');
    document.title = title ? `${title} · kiln` : 'kiln';
  }, [route.path]);
  return (
    <>
      <a class="skip" href="#main">
        Skip to content
      </a>
      <header class="top">
        <a class="brand" href="/projects">
          kiln
        </a>
        <nav aria-label="Main">
          {NAV.map(([href, label]) => (
            <a
              key={href}
              href={href}
              aria-current={
                route.path === href || (href === '/builds' && route.path.startsWith('/builds/')) ? 'page' : undefined
              }
            >
              {label}
            </a>
          ))}
        </nav>
        <span class="who">
          <span title={`signed in as ${session.name}`}>{session.name}</span>{' '}
          <span class={`role role-${session.role}`}>{session.role}</span>{' '}
          <button type="button" class="small" onClick={() => void signOut()}>
            Sign out
          </button>
        </span>
      </header>
      <Banner />
      <main id="main" tabIndex={-1}>
        {page(route)}
      </main>
    </>
  );
}
