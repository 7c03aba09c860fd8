import { rm } from 'node:fs/promises';
import { newVmId } from '../engine/vm.js';
import { envStatus } from '../env/status.js';
import type { EnvSpec } from '../env/spec.js';
import type { SnapshotStore } from '../snapshot/store.js';
import type { ReadyVm } from '../task/acquire.js';
import { BudgetError, errorMessage } from '../util/errors.js';
import { logger, type Logger } from '../util/log.js';
import type { MemoryBudget } from './budget.js';
import { processMemory, vmDirOf } from './charges.js';

/** What a refill reserves until its VM is idle and charged by what it holds. Replaced by
 * the measured PSS of the pool's last idle VM. */
const DEFAULT_FILL_ESTIMATE_BYTES = 384 * 2 ** 20;
const RESTORE_RETRY_MS = 30_000;

export interface EnvPoolDeps {
  budget: MemoryBudget;
  store: SnapshotStore;
  /** Restore a ready VM (agent answers, clock and entropy fixed) into `vmId`. */
  restore: (spec: EnvSpec, snapshotId: string, vmId: string) => Promise<ReadyVm>;
  freshnessCheckMs: number;
  /** Something changed: a VM is ready, died or was taken. */
  onChange: () => void;
}

export interface PoolView {
  envName: string;
  targetSize: number;
  ready: number;
  filling: number;
  snapshotId: string | null;
  vmIds: string[];
  hostRssBytes: number;
  hostPssBytes: number;
  /** Why the pool is not full, when it is not: no fresh snapshot, budget, restore failure. */
  blocked: string | null;
}

/**
 * The warm VMs of one environment, all restored from `snapshotId`: the newest fresh snapshot
 * the last check found. When another snapshot replaces it, the old VMs are destroyed at
 * once and VMs still being restored from it are destroyed when they come up.
 */
export class EnvPool {
  target = 0;
  spec: EnvSpec | null = null;
  snapshotId: string | null = null;
  blocked: string | null = null;
  private ready: ReadyVm[] = [];
  private readonly filling = new Set<string>();
  private filler: Promise<void> | undefined;
  private refreshing: Promise<void> = Promise.resolve();
  private newestSeen: string | null = null;
  private checkedAtMs = 0;
  private retryAtMs = 0;
  private fillEstimateBytes = DEFAULT_FILL_ESTIMATE_BYTES;
  private closed = false;
  private readonly log: Logger;

  constructor(readonly envName: string, private readonly deps: EnvPoolDeps) {
    this.log = logger({ part: 'pool', envId: envName });
  }

  /**
   * Bring the pool's snapshot up to date. Every call looks at the store (cheap); a full
   * freshness check (the environment's inputs, seconds) runs when a new snapshot appeared,
   * when asked for, and every freshnessCheckMs, so a pool drains when its inputs change too.
   */
  refresh(spec: EnvSpec, opts: { full?: boolean } = {}): Promise<void> {
    this.spec = spec;
    if (opts.full) this.checkedAtMs = 0;
    this.refreshing = this.refreshing.then(() => this.check(spec))
      .catch((err) => {
        // An unreachable repository is asked again after freshnessCheckMs, not every tick.
        this.checkedAtMs = Date.now();
        this.unavailable(`cannot check the snapshot: ${errorMessage(err)}`);
      });
    return this.refreshing;
  }

  /** Freshness cannot be known (the spec or repository is gone, say): hold no VMs. */
  unavailable(reason: string): void {
    if (this.blocked !== reason) this.log.warn({ reason }, 'pool drained');
    this.switchTo(null);
    this.blocked = reason;
  }

  private async check(spec: EnvSpec): Promise<void> {
    const newest = (await this.deps.store.list({ envName: this.envName })).find((s) => s.valid)?.id ?? null;
    const due = newest !== this.newestSeen || Date.now() - this.checkedAtMs >= this.deps.freshnessCheckMs;
    this.newestSeen = newest;
    if (!due) return;
    const status = await envStatus(spec, this.deps.store);
    this.checkedAtMs = Date.now();
    this.switchTo(status.state === 'fresh' ? status.snapshotId : null);
    this.blocked = status.state === 'fresh' ? null : `no fresh snapshot (${status.reasons.join('; ')}); ` +
      `run \`prewarm env prepare ${this.envName}\``;
  }

  private switchTo(snapshotId: string | null): void {
    if (snapshotId === this.snapshotId) return;
    const old = this.ready.filter((r) => r.snapshotId !== snapshotId);
    this.log.info({ from: this.snapshotId, to: snapshotId, draining: old.map((r) => r.vm.id) }, 'pool snapshot changed');
    this.snapshotId = snapshotId;
    this.ready = this.ready.filter((r) => r.snapshotId === snapshotId);
    this.retryAtMs = 0;
    for (const r of old) void this.destroy(r);
  }

  /** Ask for a full freshness check at the next refresh. */
  requestCheck(): void {
    this.checkedAtMs = 0;
  }

  /** Trim to the target and start filling up to it (in the background, one VM at a time:
   * restores compete for the host's cores). */
  maintain(): void {
    while (this.ready.length > this.target) void this.destroy(this.ready.shift()!);
    if (this.closed || this.filler || !this.snapshotId || Date.now() < this.retryAtMs) return;
    if (this.ready.length + this.filling.size >= this.target) return;
    this.filler = this.fillLoop().finally(() => { this.filler = undefined; });
  }

  private async fillLoop(): Promise<void> {
    while (!this.closed && this.snapshotId && this.spec && this.ready.length + this.filling.size < this.target) {
      if (!(await this.fillOne(this.spec, this.snapshotId))) return;
    }
  }

  /** Restore one VM into the pool. False when the pool should stop filling for now. */
  private async fillOne(spec: EnvSpec, snapshotId: string): Promise<boolean> {
    const vmId = newVmId();
    try {
      await this.deps.store.materialize(snapshotId);
      await this.deps.budget.admit({
        vmId, bytes: this.fillEstimateBytes, role: 'pool-filling', envName: this.envName, snapshotId,
        what: `a pool VM for ${this.envName}`,
      }, { waitMs: 0, evictPool: false });
    } catch (err) {
      if (!(err instanceof BudgetError)) this.retryAtMs = Date.now() + RESTORE_RETRY_MS;
      if (this.blocked !== errorMessage(err)) this.log.info({ err: errorMessage(err) }, 'pool not filled');
      this.blocked = errorMessage(err);
      return false;
    }

    this.filling.add(vmId);
    let ready: ReadyVm;
    try {
      ready = await this.deps.restore(spec, snapshotId, vmId);
    } catch (err) {
      await rm(vmDirOf(vmId), { recursive: true, force: true });
      this.blocked = `restoring a pool VM failed: ${errorMessage(err)}`;
      this.retryAtMs = Date.now() + RESTORE_RETRY_MS;
      this.log.warn({ vmId, err: errorMessage(err) }, 'pool restore failed');
      return false;
    } finally {
      this.filling.delete(vmId);
    }

    if (this.closed || snapshotId !== this.snapshotId || this.ready.length >= this.target) {
      await this.destroy(ready);
      return !this.closed;
    }
    const idle = await this.deps.budget.setRole(vmId, {
      role: 'pool-ready', reservedBytes: 0, envName: this.envName, snapshotId,
    }).catch(() => false);
    if (!idle || ready.vm.state === 'destroyed') {
      await this.destroy(ready);
      return true;
    }
    this.fillEstimateBytes = processMemory(ready.vm.qemuPid ?? 0)?.pssBytes || DEFAULT_FILL_ESTIMATE_BYTES;
    this.ready.push(ready);
    this.blocked = null;
    // A pool VM that dies (a task of another process evicted it) leaves the pool.
    void ready.vm.processExited.then(() => {
      const index = this.ready.indexOf(ready);
      if (index < 0) return;
      this.ready.splice(index, 1);
      this.log.info({ vmId }, 'pool VM exited');
      void this.destroy(ready);
      this.deps.onChange();
    });
    this.log.info({ vmId, snapshotId, ready: this.ready.length, target: this.target }, 'pool VM ready');
    this.deps.onChange();
    return true;
  }

  /** Remove a ready VM of `snapshotId` from the pool: it is the caller's from here on, and
   * nobody else can get it. */
  take(snapshotId: string): ReadyVm | null {
    if (snapshotId !== this.snapshotId) return null;
    for (let r = this.ready.shift(); r; r = this.ready.shift()) {
      if (r.snapshotId === snapshotId && r.vm.state !== 'destroyed') return r;
      void this.destroy(r);
    }
    return null;
  }

  view(): PoolView {
    const mem = this.ready.map((r) => processMemory(r.vm.qemuPid ?? 0) ?? { rssBytes: 0, pssBytes: 0 });
    return {
      envName: this.envName, targetSize: this.target, ready: this.ready.length, filling: this.filling.size,
      snapshotId: this.snapshotId, vmIds: this.ready.map((r) => r.vm.id),
      hostRssBytes: mem.reduce((n, m) => n + m.rssBytes, 0), hostPssBytes: mem.reduce((n, m) => n + m.pssBytes, 0),
      blocked: this.blocked,
    };
  }

  /** Destroy every VM of the pool, waiting for a restore in progress. */
  async close(): Promise<void> {
    this.closed = true;
    await Promise.all(this.ready.splice(0).map((r) => this.destroy(r)));
    await this.filler;
  }

  async destroy(r: ReadyVm): Promise<void> {
    await r.guest.agent.close().catch(() => {});
    await r.vm.destroy().catch((err) => this.log.warn({ vmId: r.vm.id, err: errorMessage(err) }, 'destroy failed'));
  }
}
