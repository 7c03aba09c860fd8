import { WarmPools } from '../pool/pool.js';
import { budgetedVmSource } from '../pool/source.js';
import { openState, type StateStore, type Task } from '../state/db.js';
import { InputError, errorMessage } from '../util/errors.js';
import { logger } from '../util/log.js';
import { buildApp, type Api } from './app.js';
import { loadOrCreateToken, tokenPath } from './auth.js';
import type { EnvOps } from './env-ops.js';
import { ServiceMetrics } from './metrics.js';
import { TaskQueue, type Admit } from './queue.js';
import { vmTaskRunner, type TaskRunner } from './runner.js';

export const DEFAULTS = { host: '127.0.0.1', port: 7070, concurrency: 2, graceSeconds: 30 } as const;

export interface ServiceOptions {
  /** Default 127.0.0.1 (loopback only). */
  host?: string;
  /** Default 7070; 0 picks a free port. */
  port?: number;
  /** Tasks run at once; default 2. */
  concurrency?: number;
  admit?: Admit;
  /** State database; default PREWARM_HOME/state.db. */
  statePath?: string;
  /** Test seams: the default runner restores real VMs, the default env ops prepare them. */
  runner?: TaskRunner;
  envOps?: EnvOps;
  queuePollMs?: number;
  logPollMs?: number;
}

/**
 * A running service. Lifecycle: startService() -> serving -> shutdown(graceMs), which is safe
 * to call twice (the second call waits for the first).
 */
export interface Service {
  url: string;
  tokenPath: string;
  token: string;
  /** The token file was made by this start. */
  tokenCreated: boolean;
  /** Tasks found running under a dead runner and marked 'error' at start. */
  recovered: Task[];
  api: Api;
  queue: TaskQueue;
  state: StateStore;
  shutdown(graceMs?: number): Promise<void>;
  /** During shutdown: cancel the running tasks now instead of at the end of the grace period. */
  hurry(): void;
}

/**
 * Open the state, load (or create) the token, recover orphaned tasks, start the workers and
 * listen. Queued tasks left by an earlier run start at once.
 */
export async function startService(opts: ServiceOptions = {}): Promise<Service> {
  const log = logger({ part: 'service' });
  const state = openState(opts.statePath);
  // The real runner gets warm pools and the host memory budget; test runners get neither.
  const pools = opts.runner ? null : await startPools(state);
  let draining = false;
  let closing: Promise<void> | undefined;
  try {
    const { token, created } = await loadOrCreateToken();
    const metrics = new ServiceMetrics(state);
    let api: Api | undefined;
    await metrics.seed();
    const queue = new TaskQueue({
      state,
      runner: opts.runner ?? vmTaskRunner(state, pools?.vmSource() ?? budgetedVmSource()),
      concurrency: opts.concurrency ?? DEFAULTS.concurrency,
      admit: opts.admit,
      pollMs: opts.queuePollMs,
      onSettled: (id) => {
        void metrics.observeId(id).catch(() => {});
        api?.streams.notify(id);
      },
    });
    api = buildApp({
      state, token, queue, envOps: opts.envOps, metrics, logPollMs: opts.logPollMs,
      draining: () => draining,
    });

    // Listen first: a port in use must fail the start before the queue takes any task.
    const host = opts.host ?? DEFAULTS.host;
    const port = opts.port ?? DEFAULTS.port;
    const listened = await api.app.listen({ host, port }).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== 'EADDRINUSE' && err.code !== 'EACCES' && err.code !== 'EADDRNOTAVAIL') throw err;
      throw new InputError(`cannot listen on ${host}:${port} (${err.code}): ` +
        (err.code === 'EADDRINUSE' ? 'another process (another prewarm serve?) has it; choose another --port'
          : err.code === 'EACCES' ? 'not allowed; choose a port above 1023' : 'no such address on this host'));
    });
    // Fastify names a loopback address for a wildcard host; say what was asked for.
    const address = host === '0.0.0.0' || host === '::'
      ? `http://${host.includes(':') ? `[${host}]` : host}:${new URL(listened).port}` : listened;
    const recovered = await queue.start();
    for (const task of recovered) metrics.observe(task);
    log.info({ url: address, concurrency: queue.concurrency, recovered: recovered.length }, 'service listening');

    const shutdown = (graceMs = DEFAULTS.graceSeconds * 1000): Promise<void> => {
      draining = true;
      closing ??= drain(api, queue, state, graceMs, pools);
      return closing;
    };
    return {
      url: address, tokenPath: tokenPath(), token, tokenCreated: created, recovered,
      api, queue, state, shutdown, hurry: () => queue.hurry(),
    };
  } catch (err) {
    await pools?.stop();
    state.close();
    throw err;
  }
}

/** Keep the warm pools, unless another process (`prewarm pool run`) already does. */
async function startPools(state: StateStore): Promise<WarmPools | null> {
  try {
    return await WarmPools.start({ state });
  } catch (err) {
    logger({ part: 'service' }).warn({ err: errorMessage(err) }, 'warm pools not kept by this service');
    return null;
  }
}

/**
 * Graceful shutdown: stop accepting requests (new ones get 503), let running tasks and
 * prepares finish within the grace period, cancel the tasks still running then, end the log
 * streams, destroy any VM this process still owns, close the state. Queued tasks stay queued
 * for the next start.
 */
async function drain(api: Api, queue: TaskQueue, state: StateStore, graceMs: number, pools: WarmPools | null): Promise<void> {
  const log = logger({ part: 'service' });
  const deadline = Date.now() + graceMs;
  log.info({ graceMs, running: queue.running }, 'shutting down');
  const closed = api.app.close();

  const { finished, cancelled } = await queue.stop(graceMs);
  const preparesDone = await Promise.race([
    api.jobs.settled().then(() => true),
    new Promise<false>((resolve) => setTimeout(resolve, Math.max(0, deadline - Date.now()), false).unref()),
  ]);
  await api.streams.settle(2_000);
  api.streams.closeAll();
  await closed;

  await pools?.stop();
  const swept = await destroyOwnVms();
  state.close();
  log.info({ finished, cancelled, preparesDone, vmsDestroyed: swept }, 'stopped');
}

/** Every VM this process still owns (a prepare cut short, a pool VM) is destroyed. */
async function destroyOwnVms(): Promise<string[]> {
  const { killVm, listVms } = await import('../engine/reaper.js');
  const destroyed: string[] = [];
  for (const vm of await listVms()) {
    if (vm.owner?.pid !== process.pid) continue;
    await killVm(vm, vm.dir).then(() => destroyed.push(vm.vmId), (err) => {
      logger({ part: 'service' }).warn({ vmId: vm.vmId, err: errorMessage(err) }, 'destroying a VM failed');
    });
  }
  return destroyed;
}
