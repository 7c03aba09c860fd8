import { reapVms } from '../engine/reaper.js';
import { loadSpec, type EnvSpec } from '../env/spec.js';
import { SnapshotStore } from '../snapshot/store.js';
import type { StateStore } from '../state/db.js';
import { restoreReady, type ReadyVm, type VmSource } from '../task/acquire.js';
import { warmCommandPath } from '../task/warm-up.js';
import { NotFoundError, PrewarmError, errorMessage } from '../util/errors.js';
import { logger } from '../util/log.js';
import { MemoryBudget } from './budget.js';
import { EnvPool, type PoolView } from './env-pool.js';
import { freshenForHandOut } from './handout.js';
import { claimManager } from './manager-file.js';
import { budgetedVmSource, type BudgetedSourceOptions } from './source.js';

export type { PoolView } from './env-pool.js';

export interface WarmPoolsOptions {
  state: StateStore;
  budget?: MemoryBudget;
  store?: SnapshotStore;
  /** How often targets are re-read, snapshots looked at and pools refilled; default 2000. */
  tickMs?: number;
  /** How often each pool re-checks its environment's inputs; default 60000. A new snapshot
   * in the store is noticed at the next tick regardless. */
  freshnessCheckMs?: number;
  /** Test seam: how a pool VM is restored. */
  restore?: (spec: EnvSpec, snapshotId: string, vmId: string) => Promise<ReadyVm>;
}

/**
 * Warm pools: for each environment with a target in the state store, that many VMs restored
 * from its newest fresh snapshot, ready to take a task. One process keeps them (the service
 * or `prewarm pool run`); its VMs die with it, and the next start reaps them and fills again.
 *
 * Lifecycle: WarmPools.start() -> take() / list() / vmSource() -> stop() (destroys every
 * pool VM; safe to call twice).
 */
export class WarmPools {
  readonly budget: MemoryBudget;
  readonly store: SnapshotStore;
  private readonly pools = new Map<string, EnvPool>();
  private readonly log = logger({ part: 'pool' });
  private timer: NodeJS.Timeout | undefined;
  private ticking: Promise<void> | undefined;
  private again = false;
  private stopping: Promise<void> | undefined;
  private listeners = new Set<() => void>();

  private constructor(
    private readonly opts: WarmPoolsOptions,
    store: SnapshotStore,
    private readonly release: () => Promise<void>,
  ) {
    this.budget = opts.budget ?? new MemoryBudget();
    this.store = store;
  }

  /** Claim the pools of this PREWARM_HOME, remove what a killed manager left, fill. */
  static async start(opts: WarmPoolsOptions): Promise<WarmPools> {
    const release = await claimManager();
    try {
      const reaped = await reapVms();
      const pools = new WarmPools(opts, opts.store ?? (await SnapshotStore.open()), release);
      if (reaped.length > 0) pools.log.info({ vmIds: reaped }, 'removed leftover VMs');
      pools.log.info({ budget: pools.budget.settings }, 'pools starting');
      await pools.tick();
      pools.timer = setInterval(() => pools.kick(), opts.tickMs ?? 2000);
      return pools;
    } catch (err) {
      await release();
      throw err;
    }
  }

  /** Run a maintenance round soon (targets, snapshots, refills). */
  kick(): void {
    if (this.stopping) return;
    if (this.ticking) {
      this.again = true;
      return;
    }
    this.ticking = this.tick()
      .catch((err) => this.log.warn({ err: errorMessage(err) }, 'pool round failed'))
      .finally(() => {
        this.ticking = undefined;
        if (this.again) {
          this.again = false;
          this.kick();
        }
      });
  }

  private async tick(): Promise<void> {
    const targets = new Map((await this.opts.state.pools.list())
      .filter((p) => p.targetSize > 0).map((p) => [p.envName, p.targetSize]));
    for (const [envName, pool] of this.pools) {
      if (targets.has(envName)) continue;
      this.pools.delete(envName);
      void pool.close();
    }
    for (const [envName, target] of targets) {
      if (this.stopping) return;
      let pool = this.pools.get(envName);
      if (!pool) {
        pool = new EnvPool(envName, {
          budget: this.budget, store: this.store, freshnessCheckMs: this.opts.freshnessCheckMs ?? 60_000,
          restore: this.opts.restore ?? ((spec, id, vmId) => this.restoreWarm(spec, id, vmId)),
          onChange: () => this.changed(),
        });
        this.pools.set(envName, pool);
      }
      pool.target = target;
      try {
        await pool.refresh(await this.specOf(envName));
      } catch (err) {
        pool.unavailable(errorMessage(err));
      }
      pool.maintain();
    }
    this.changed();
  }

  /** A pool VM: restored, then its task's command path run once (see warmCommandPath). */
  private async restoreWarm(spec: EnvSpec, snapshotId: string, vmId: string): Promise<ReadyVm> {
    const ready = await restoreReady(spec, snapshotId, this.store, { vmId });
    try {
      await warmCommandPath(ready.guest, spec);
    } catch (err) {
      await ready.guest.agent.close().catch(() => {});
      await ready.vm.destroy().catch(() => {});
      throw err;
    }
    return ready;
  }

  private async specOf(envName: string): Promise<EnvSpec> {
    const env = await this.opts.state.environments.get(envName);
    if (!env) throw new NotFoundError(`environment ${envName} is not registered`);
    return loadSpec(env.specPath);
  }

  /**
   * Hand out a pool VM of `snapshotId`, or null when there is none (the caller restores).
   * The VM leaves the pool before anything else happens, so it is never handed out twice.
   * `beforeHandOut` (the task's admission) runs first; then the guest's entropy is reseeded
   * and its clock checked (and set when off), since the VM may have sat idle for minutes.
   */
  async take(envName: string, snapshotId: string, beforeHandOut?: (vm: ReadyVm) => Promise<void>): Promise<ReadyVm | null> {
    const startedAt = performance.now();
    const pool = this.pools.get(envName);
    if (!pool || this.stopping) return null;
    if (pool.snapshotId !== snapshotId) {
      // The task saw another fresh snapshot than the pool did: check again now.
      pool.requestCheck();
      this.kick();
      return null;
    }
    for (let r = pool.take(snapshotId); r; r = pool.take(snapshotId)) {
      this.kick();
      const vmId = r.vm.id;
      const claimed = await this.budget.setRole(vmId,
        { role: 'task', reservedBytes: 0, envName, snapshotId }, 'pool-ready').catch(() => false);
      if (!claimed || r.vm.state === 'destroyed') {
        await pool.destroy(r);
        continue;
      }
      try {
        await beforeHandOut?.(r);
      } catch (err) {
        await pool.destroy(r);
        throw err;
      }
      let fresh: Awaited<ReturnType<typeof freshenForHandOut>>;
      try {
        fresh = await freshenForHandOut(r.guest);
      } catch (err) {
        this.log.warn({ vmId, err: errorMessage(err) }, 'pool VM did not answer at hand-out; destroyed');
        await pool.destroy(r);
        continue;
      }
      this.log.info({ vmId, envId: envName, ...fresh }, 'pool VM handed out');
      return { ...r, fromPool: true, acquireMs: performance.now() - startedAt };
    }
    return null;
  }

  /** A VmSource for runTask: a pool VM when there is one, else a restore; both admitted
   * by the budget. */
  vmSource(opts: Omit<BudgetedSourceOptions, 'budget' | 'pools' | 'store'> = {}): VmSource {
    return budgetedVmSource({ ...opts, budget: this.budget, pools: this, store: this.store });
  }

  list(): PoolView[] {
    return [...this.pools.values()].map((p) => p.view()).sort((a, b) => a.envName.localeCompare(b.envName));
  }

  /** Called after every change (a VM ready, gone or taken); returns the unsubscribe. */
  onChange(listener: () => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  private changed(): void {
    for (const listener of this.listeners) listener();
  }

  /** Resolve once every pool (or `envName`'s) has its target of ready VMs. */
  async whenFull(opts: { envName?: string; timeoutMs: number }): Promise<void> {
    const deadline = Date.now() + opts.timeoutMs;
    const full = () => this.list().filter((p) => !opts.envName || p.envName === opts.envName)
      .every((p) => p.ready >= p.targetSize) && (!opts.envName || this.pools.has(opts.envName));
    while (!full()) {
      if (Date.now() > deadline) {
        throw new PrewarmError('POOL_TIMEOUT', `pools not full after ${opts.timeoutMs} ms: ` +
          JSON.stringify(this.list().map(({ envName, targetSize, ready, filling, blocked }) =>
            ({ envName, targetSize, ready, filling, blocked }))));
      }
      await new Promise((r) => setTimeout(r, 200));
    }
  }

  /** Destroy every pool VM and give up the pools. */
  stop(): Promise<void> {
    this.stopping ??= (async () => {
      clearInterval(this.timer);
      await this.ticking;
      await Promise.all([...this.pools.values()].map((p) => p.close()));
      this.pools.clear();
      await this.release();
      this.log.info('pools stopped');
    })();
    return this.stopping;
  }
}
