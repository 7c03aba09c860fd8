import { readFileSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { join } from 'node:path';
import { killVm } from '../engine/reaper.js';
import { BudgetError, InputError, throwIfCancelled } from '../util/errors.js';
import { logger } from '../util/log.js';
import { prewarmHome } from '../util/paths.js';
import { isEvictable, vmCharges, vmDirOf, writeRole, type RoleInput, type VmCharge, type VmRole } from './charges.js';
import { withFileLock } from '../util/file-lock.js';
import { Waiters } from './waiters.js';

const GiB = 2 ** 30;
const MiB = 2 ** 20;

/**
 * The host memory budget: all VMs on the host, of every prewarm process, fit in it.
 *
 * Settings (environment, then default):
 * - PREWARM_MEMORY_BUDGET_MIB: the budget. Default 75% of MemTotal less 1 GiB, which leaves
 *   the host a quarter of its memory plus 1 GiB (17 GiB of a 24 GiB host).
 * - PREWARM_OVERCOMMIT: how far tiers may be overcommitted, >= 1. A running task reserves
 *   tier / PREWARM_OVERCOMMIT; default 1.0, so a task can always reach its tier's limit.
 * - PREWARM_ADMIT_WAIT_SECONDS: how long a task waits for memory before it is refused;
 *   default 300. 0 refuses at once.
 */
export interface BudgetSettings {
  budgetBytes: number;
  overcommit: number;
  waitMs: number;
  /** Where the budget came from, in words. */
  source: string;
}

export function budgetSettings(env: NodeJS.ProcessEnv = process.env, memTotalBytes = hostMemTotalBytes()): BudgetSettings {
  const num = (name: string, min: number): number | undefined => {
    const raw = env[name];
    if (raw === undefined || raw === '') return undefined;
    const n = Number(raw);
    if (!Number.isFinite(n) || n < min) throw new InputError(`${name} must be a number >= ${min}, got "${raw}"`);
    return n;
  };
  const budgetMiB = num('PREWARM_MEMORY_BUDGET_MIB', 1);
  const defaultBytes = Math.max(GiB, Math.floor(memTotalBytes * 0.75) - GiB);
  return {
    budgetBytes: budgetMiB !== undefined ? Math.floor(budgetMiB * MiB) : defaultBytes,
    overcommit: num('PREWARM_OVERCOMMIT', 1) ?? 1,
    waitMs: (num('PREWARM_ADMIT_WAIT_SECONDS', 0) ?? 300) * 1000,
    source: budgetMiB !== undefined ? 'PREWARM_MEMORY_BUDGET_MIB' : '75% of host memory less 1 GiB',
  };
}

export function hostMemTotalBytes(): number {
  const kib = Number(/^MemTotal:\s+(\d+)/m.exec(readFileSync('/proc/meminfo', 'utf8'))?.[1] ?? 0);
  return kib * 1024;
}

/** "1.9 GiB", "6 GiB" */
export function gib(bytes: number): string {
  const value = bytes / GiB;
  return `${(value >= 10 ? value.toFixed(0) : value.toFixed(1)).replace(/\.0$/, '')} GiB`;
}

export interface AdmitRequest {
  /** The VM to admit: a new id (created by the admission) or a pool VM being handed out. */
  vmId: string;
  bytes: number;
  role: VmRole;
  envName: string;
  snapshotId: string | null;
  /** In the messages: "task on hello-node". */
  what: string;
}

export interface AdmitOptions {
  /** Default: the settings' waitMs for tasks, 0 for pool refills. */
  waitMs?: number;
  /** Called once when the request starts waiting. */
  onWait?: (info: { missingBytes: number; message: string }) => void;
  /** Push out idle pool VMs to make room; default: only for tasks. */
  evictPool?: boolean;
  /** Stop waiting (CancelledError) when this aborts. */
  signal?: AbortSignal;
}

export interface BudgetUsage {
  budgetBytes: number;
  usedBytes: number;
  freeBytes: number;
  charges: VmCharge[];
}

/** What the budget reads and changes; tests swap in fakes. */
export interface BudgetDeps {
  charges: () => Promise<VmCharge[]>;
  evict: (charge: VmCharge) => Promise<void>;
  writeRole: (vmId: string, role: RoleInput, opts: { create: boolean }) => Promise<void>;
  lockPath: string;
  waiters: Waiters;
  pollMs: number;
}

const realDeps = (): BudgetDeps => ({
  charges: () => vmCharges(),
  evict: (c) => killVm(c.record!, c.dir),
  writeRole: async (vmId, role, opts) => {
    if (opts.create) await mkdir(vmDirOf(vmId), { recursive: true });
    await writeRole(vmDirOf(vmId), role);
  },
  lockPath: join(prewarmHome(), 'budget', 'lock'),
  waiters: new Waiters(join(prewarmHome(), 'budget')),
  pollMs: 500,
});

/** Work someone waits for (a task, a prepare): it waits for room, pushes idle pool VMs out,
 * and pool refills leave it the room it asks for. */
const isForeground = (role: VmRole) => role === 'task' || role === 'prepare';

const sum = (charges: VmCharge[]) => charges.reduce((n, c) => n + c.chargeBytes, 0);

/**
 * Admission against the budget. A decision and the reservation it makes happen under one
 * lock shared by all prewarm processes, so two admissions never both take the last room.
 * Tasks come first: they push out idle pool VMs, and pool refills leave alone the room that
 * waiting tasks are asking for.
 */
export class MemoryBudget {
  private readonly deps: BudgetDeps;
  private readonly log = logger({ part: 'budget' });

  constructor(readonly settings: BudgetSettings = budgetSettings(), deps: Partial<BudgetDeps> = {}) {
    this.deps = { ...realDeps(), ...deps };
  }

  /** What a task on a VM of `tierMiB` reserves while it runs. */
  taskReservationBytes(tierMiB: number): number {
    return Math.ceil((tierMiB * MiB) / this.settings.overcommit);
  }

  async usage(): Promise<BudgetUsage> {
    const charges = await this.deps.charges();
    const usedBytes = sum(charges);
    return { budgetBytes: this.settings.budgetBytes, usedBytes, freeBytes: this.settings.budgetBytes - usedBytes, charges };
  }

  /** Admit the request now, or wait for room up to waitMs, or throw BudgetError saying how
   * much memory is missing. On success the VM's reservation is recorded. */
  async admit(req: AdmitRequest, opts: AdmitOptions = {}): Promise<void> {
    const isTask = isForeground(req.role);
    const waitMs = opts.waitMs ?? (isTask ? this.settings.waitMs : 0);
    const deadline = Date.now() + waitMs;
    let waiting: (() => Promise<void>) | undefined;
    try {
      for (;;) {
        throwIfCancelled(opts.signal);
        const outcome = await withFileLock(this.deps.lockPath, () => this.tryAdmit(req, opts.evictPool ?? isTask));
        if (outcome.admitted) return;
        const message = this.refusal(req, outcome.needBytes, outcome.freeBytes);
        const missingBytes = outcome.needBytes - Math.max(0, outcome.freeBytes);
        if (outcome.never || Date.now() >= deadline) throw new BudgetError(message, missingBytes);
        if (!waiting) {
          if (isTask) waiting = await this.deps.waiters.add(outcome.needBytes);
          else waiting = async () => {};
          this.log.info({ vmId: req.vmId, missingBytes }, 'waiting for memory');
          opts.onWait?.({ missingBytes, message });
        }
        await sleep(Math.min(this.deps.pollMs, Math.max(1, deadline - Date.now())), undefined, { signal: opts.signal })
          .catch(() => throwIfCancelled(opts.signal));
      }
    } finally {
      await waiting?.();
    }
  }

  private async tryAdmit(req: AdmitRequest, evictPool: boolean) {
    let charges = await this.deps.charges();
    const own = charges.find((c) => c.vmId === req.vmId);
    const needBytes = Math.max(own?.pssBytes ?? 0, req.bytes);
    const budgetBytes = this.settings.budgetBytes;
    const others = () => sum(charges.filter((c) => c.vmId !== req.vmId));
    // Pool VMs leave the room that waiting tasks ask for (ours is not among them yet).
    const held = isForeground(req.role) ? 0 : await this.deps.waiters.totalBytes();
    const free = () => budgetBytes - others() - held;
    if (needBytes > budgetBytes) return { admitted: false, never: true, needBytes, freeBytes: free() };

    if (needBytes > free() && evictPool) {
      const victims = charges.filter((c) => c.vmId !== req.vmId && isEvictable(c))
        .sort((a, b) => b.chargeBytes - a.chargeBytes);
      // Only when pushing pool VMs out makes it fit: otherwise they stay until it would.
      if (needBytes <= free() + sum(victims)) {
        for (const victim of victims) {
          if (needBytes <= free()) break;
          this.log.info({ vmId: victim.vmId, envName: victim.role?.envName, for: req.what }, 'evicting pool vm');
          await this.deps.evict(victim);
          charges = charges.filter((c) => c !== victim);
        }
      }
    }
    if (needBytes > free()) return { admitted: false, never: false, needBytes, freeBytes: free() };
    await this.deps.writeRole(req.vmId, {
      role: req.role, reservedBytes: req.bytes, envName: req.envName, snapshotId: req.snapshotId,
    }, { create: !own });
    return { admitted: true, never: false, needBytes, freeBytes: free() };
  }

  private refusal(req: AdmitRequest, needBytes: number, freeBytes: number): string {
    const budget = `${gib(this.settings.budgetBytes)} budget`;
    const fix = 'wait for running tasks, lower pool sizes, or raise PREWARM_MEMORY_BUDGET_MIB';
    if (needBytes > this.settings.budgetBytes) {
      return `${req.what} needs ${gib(needBytes)} but the whole ${budget} is smaller; ` +
        'raise PREWARM_MEMORY_BUDGET_MIB (or PREWARM_OVERCOMMIT) or use a smaller tier';
    }
    const free = Math.max(0, freeBytes);
    return `${req.what} needs ${gib(needBytes)} but only ${gib(free)} of the ${budget} is free ` +
      `(${gib(needBytes - free)} missing); ${fix}`;
  }

  /**
   * Change the role of a VM this process owns, under the lock. With `expect`, only if its
   * current role is that one: a pool VM is claimed for a task only if no task of another
   * process has evicted it first. Returns whether the role was written.
   */
  async setRole(vmId: string, role: RoleInput, expect?: VmRole): Promise<boolean> {
    return withFileLock(this.deps.lockPath, async () => {
      if (expect) {
        const current = (await this.deps.charges()).find((c) => c.vmId === vmId);
        if (!current || current.role?.role !== expect) return false;
      }
      await this.deps.writeRole(vmId, role, { create: false });
      return true;
    });
  }
}

