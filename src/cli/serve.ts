/**
 * `kiln serve` — the build service: REST API, durable queue in SQLite, builds in warm local workers.
 * `kiln serve token create --role admin|viewer` — a new API token (printed once, alone on the last line); works
 * while the service runs (the database is shared through SQLite's WAL).
 *
 * SIGTERM/SIGINT: stop taking work, let running builds finish up to the grace period, then cancel them cleanly.
 */
import type { Command } from 'commander';
import { join } from 'node:path';
import { setFlagsFromString } from 'node:v8';
import { KilnError } from '../errors.js';
import type { BuildRunner } from '../service/runner/local.js';

interface ServeFlags {
  listen: string;
  dataDir?: string;
  config?: string;
  logRequests?: boolean;
  executor?: string;
  kubeconfig?: string;
  workerNice?: string;
}

/** `--worker-nice`: undefined keeps the runner's default; anything but an integer 0–19 is one clear line. */
function parseWorkerNice(v: string | undefined): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!/^\d+$/.test(v) || n > 19) {
    throw new KilnError('OPTION_INVALID', `--worker-nice ${v}: expected an integer from 0 to 19`, {
      hint: "0 runs builds at the service's own priority; 5 (the default) keeps the API responsive under load",
    });
  }
  return n;
}

async function defaultDataDir(flag: string | undefined): Promise<string> {
  if (flag) return flag;
  const { kilnHome } = await import('../util/paths.js');
  return join(kilnHome(), 'server');
}

function parseListen(v: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]*)):(\d{1,5})$/.exec(v) ?? /^()()(\d{1,5})$/.exec(v);
  const port = m ? Number(m[3]) : NaN;
  if (!m || !(port >= 0 && port < 65536)) {
    throw new KilnError('OPTION_INVALID', `--listen ${v}: expected HOST:PORT`, {
      hint: 'e.g. --listen 127.0.0.1:8080',
    });
  }
  return { host: m[1] ?? (m[2] || '127.0.0.1'), port };
}

async function serve(flags: ServeFlags): Promise<void> {
  const { host, port } = parseListen(flags.listen);
  // A larger young generation before the service allocates: API answers are short-lived garbage, and with V8's
  // default semi-space a scavenge every few hundred requests put the API's p99 at ~50 ms under 100 concurrent clients.
  // NODE_OPTIONS' own --max-semi-space-size wins.
  if (!/--max-semi-space-size/.test(`${process.env.NODE_OPTIONS ?? ''} ${process.execArgv.join(' ')}`)) {
    setFlagsFromString('--max-semi-space-size=64');
  }
  const dataDir = await defaultDataDir(flags.dataDir);
  const { loadConfigFile, parseConfigDocument } = await import('../service/config/parse.js');
  const config = flags.config ? loadConfigFile(flags.config) : parseConfigDocument({}, 'defaults');
  const { BuildService } = await import('../service/service.js');
  const { LocalBuildRunner } = await import('../service/runner/local.js');
  const { createApi } = await import('../service/api/server.js');
  let runner: BuildRunner;
  if (flags.executor === 'kubernetes') {
    const { loadKubeConfig, KubeClient } = await import('../k8s/client.js');
    const { KubernetesBuildRunner } = await import('../k8s/executor.js');
    const { podSettings } = await import('../k8s/settings.js');
    const kubeconfig = flags.kubeconfig ?? config.kubernetes?.kubeconfig;
    const client = new KubeClient(loadKubeConfig(kubeconfig ? { kubeconfig } : {}));
    const pod = podSettings(config.kubernetes, client);
    runner = new KubernetesBuildRunner({
      client,
      pod,
      timeoutSeconds: config.timeoutSeconds,
      ...(config.kubernetes?.podGraceSeconds !== undefined
        ? { podGraceSeconds: config.kubernetes.podGraceSeconds }
        : {}),
      ...(config.publicUrl ? { publicUrl: config.publicUrl } : {}),
    });
    process.stderr.write(`kiln serve: builds run as pods in namespace ${pod.namespace} (${client.config.server})\n`);
  } else if (flags.executor === undefined || flags.executor === 'local') {
    runner = new LocalBuildRunner({ warm: config.concurrency, nice: parseWorkerNice(flags.workerNice) });
  } else {
    throw new KilnError('OPTION_INVALID', `--executor ${flags.executor}: expected local or kubernetes`);
  }
  const svc = await BuildService.start({ dataDir, config, runner });
  const { Deliveries } = await import('../service/delivery/deliveries.js');
  const deliveries = Deliveries.start(svc, { database: join(dataDir, 'kiln.db'), publicUrl: config.publicUrl });
  // The web UI: its session cookie authenticates API calls too, so the API gets the same sessions.
  const { UiSessions } = await import('../service/ui/sessions.js');
  const sessions = UiSessions.open(join(dataDir, 'kiln.db'));
  const app = createApi(svc, { logger: flags.logRequests === true, notifications: deliveries, sessions });
  const { uiRoutes } = await import('../service/ui/index.js');
  await app.register(uiRoutes({ core: svc, sessions, events: svc.events, publicUrl: config.publicUrl }));
  const { registerHooks } = await import('../service/hooks/index.js');
  registerHooks(app, svc);
  const { startPolling } = await import('../service/triggers/poll.js');
  startPolling(svc);
  const { registryHookRoutes } = await import('../service/triggers/registry-hook.js');
  registryHookRoutes(app, svc);
  try {
    await app.listen({ host, port });
  } catch (e) {
    await svc.stop(0);
    await deliveries.stop(0);
    throw new KilnError('LISTEN_FAILED', `cannot listen on ${flags.listen}: ${(e as Error).message}`, {
      hint: 'pick another --listen address',
      cause: e,
    });
  }
  const addr = app.server.address();
  const where = typeof addr === 'object' && addr ? `${addr.address}:${addr.port}` : flags.listen;
  process.stderr.write(`kiln serve: listening on http://${where} (data ${dataDir})\n`);
  await new Promise<void>((resolve) => {
    let stopping = false;
    const stop = (sig: NodeJS.Signals): void => {
      if (stopping) return;
      stopping = true;
      process.stderr.write(`kiln serve: ${sig}: stopping (grace ${config.shutdownGraceSeconds}s)\n`);
      void svc
        .stop(config.shutdownGraceSeconds * 1000)
        .then(() => deliveries.stop())
        .then(() => app.close())
        .finally(() => {
          sessions.close();
          resolve();
        });
    };
    process.on('SIGTERM', stop);
    process.on('SIGINT', stop);
  });
  process.stderr.write('kiln serve: stopped\n');
}

async function tokenCreate(flags: { role: string; name?: string; dataDir?: string; expires?: string }): Promise<void> {
  if (flags.role !== 'admin' && flags.role !== 'viewer') {
    throw new KilnError('OPTION_INVALID', `--role ${flags.role}: expected admin or viewer`);
  }
  let expires: Date | undefined;
  if (flags.expires) {
    const m = /^(\d+)([hd])$/.exec(flags.expires);
    if (!m) throw new KilnError('OPTION_INVALID', `--expires ${flags.expires}: expected e.g. 24h or 30d`);
    expires = new Date(Date.now() + Number(m[1]) * (m[2] === 'h' ? 3600_000 : 86_400_000));
  }
  const dataDir = await defaultDataDir(flags.dataDir);
  const { Store } = await import('../service/store/store.js');
  const store = Store.open(join(dataDir, 'kiln.db'));
  try {
    const name = flags.name ?? `${flags.role}-${new Date().toISOString().slice(0, 19)}`;
    const t = store.createToken(name, flags.role, expires);
    process.stderr.write(`created ${flags.role} token ${t.id} (${name}); it is shown once:\n`);
    process.stdout.write(t.token + '\n');
  } finally {
    store.close();
  }
}

export function register(program: Command): void {
  const serveCmd = program
    .command('serve')
    .description('run the build service (REST API, queue, builds in local workers)')
    .option('--listen <host:port>', 'address of the API', '127.0.0.1:8080')
    .option('--data-dir <dir>', 'database, logs, git mirrors (default $KILN_HOME/server)')
    .option('--config <file>', 'server config YAML (settings and projects)')
    .option('--log-requests', 'log every API request (JSON lines on stdout)')
    .option(
      '--executor <kind>',
      'where builds run: local (warm worker processes, default) or kubernetes (one pod per build)',
    )
    .option(
      '--worker-nice <n>',
      'with --executor local: nice value of the build workers, 0–19 (default 5: the API stays responsive while builds use every core)',
    )
    .option('--kubeconfig <file>', 'with --executor kubernetes: kubeconfig (default: service account, $KUBECONFIG)')
    .action(async (flags: ServeFlags) => {
      await serve(flags);
    });
  // commander gives `--data-dir` after `serve token create` to `serve` (it defines the same option)
  const dataDirOf = (flags: { dataDir?: string }): string | undefined =>
    flags.dataDir ?? (serveCmd.opts() as { dataDir?: string }).dataDir;
  const token = serveCmd.command('token').description('API tokens');
  token
    .command('create')
    .description('create an API token (printed once, alone on the last line)')
    .requiredOption('--role <role>', 'admin or viewer')
    .option('--name <name>', 'who or what the token is for')
    .option('--expires <duration>', 'e.g. 24h or 30d (default: never)')
    .option('--data-dir <dir>', 'the service data dir (default $KILN_HOME/server)')
    .action(async (flags: { role: string; name?: string; dataDir?: string; expires?: string }) => {
      await tokenCreate({ ...flags, dataDir: dataDirOf(flags) });
    });
  token
    .command('ls')
    .description('list API tokens (never their values)')
    .option('--data-dir <dir>', 'the service data dir')
    .action(async (flags: { dataDir?: string }) => {
      const { Store } = await import('../service/store/store.js');
      const store = Store.open(join(await defaultDataDir(dataDirOf(flags)), 'kiln.db'));
      try {
        for (const t of store.listTokens()) {
          process.stdout.write(`${t.id}\t${t.role}\t${t.name}\t${t.revoked ? 'revoked' : (t.expiresAt ?? '-')}\n`);
        }
      } finally {
        store.close();
      }
    });
  token
    .command('revoke')
    .argument('<id>')
    .description('revoke an API token')
    .option('--data-dir <dir>', 'the service data dir')
    .action(async (id: string, flags: { dataDir?: string }) => {
      const { Store } = await import('../service/store/store.js');
      const store = Store.open(join(await defaultDataDir(dataDirOf(flags)), 'kiln.db'));
      try {
        if (!store.revokeToken(id)) throw new KilnError('NOT_FOUND', `token ${id} not found`);
      } finally {
        store.close();
      }
    });
}
