import { rm } from 'node:fs/promises';
import { newVmId } from '../engine/vm.js';
import { resolveTier } from '../env/spec.js';
import { SnapshotStore } from '../snapshot/store.js';
import { restoreReady, type VmSource } from '../task/acquire.js';
import { MemoryBudget, type AdmitRequest } from './budget.js';
import { vmDirOf } from './charges.js';
import type { WarmPools } from './pool.js';

export interface BudgetedSourceOptions {
  budget?: MemoryBudget;
  /** Take from these pools first. */
  pools?: WarmPools;
  store?: SnapshotStore;
  /** How long a task waits for memory; default from the budget's settings. */
  waitMs?: number;
}

/**
 * Where task VMs come from when the host memory budget applies: a pool VM when one of the
 * right snapshot is ready, else a restore. Either way the task is admitted first: it
 * reserves its tier / overcommit, pushing idle pool VMs out if it must, and waits or is
 * refused when that does not make room.
 */
export function budgetedVmSource(opts: BudgetedSourceOptions = {}): VmSource {
  const budget = opts.budget ?? new MemoryBudget();
  return async (spec, snapshotId, { signal, onWait } = {}) => {
    const request = (vmId: string): AdmitRequest => ({
      vmId, bytes: budget.taskReservationBytes(resolveTier(spec.tier).memoryMiB), role: 'task',
      envName: spec.name, snapshotId, what: `task on ${spec.name}`,
    });
    const admitOpts = { waitMs: opts.waitMs, onWait: (w: { message: string }) => onWait?.(w.message), signal };

    const pooled = await opts.pools?.take(spec.name, snapshotId, (r) => budget.admit(request(r.vm.id), admitOpts));
    if (pooled) return pooled;

    const store = opts.store ?? (await SnapshotStore.open());
    await store.materialize(snapshotId);
    const vmId = newVmId();
    await budget.admit(request(vmId), admitOpts);
    try {
      return await restoreReady(spec, snapshotId, store, { vmId, signal });
    } catch (err) {
      await rm(vmDirOf(vmId), { recursive: true, force: true });
      throw err;
    }
  };
}
