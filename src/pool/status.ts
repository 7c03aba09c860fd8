import type { StateStore } from '../state/db.js';
import { MemoryBudget, type BudgetSettings } from './budget.js';
import { readManager, type PoolManager } from './manager-file.js';

/** One pool as any process sees it: the target from the state store, the VMs from their
 * directories (role files written by the manager). */
export interface PoolStatus {
  envName: string;
  targetSize: number;
  ready: number;
  filling: number;
  snapshotIds: string[];
  vmIds: string[];
  hostRssBytes: number;
  hostPssBytes: number;
}

export interface PoolsReport {
  pools: PoolStatus[];
  /** The process keeping the pools filled, or null when none runs. */
  manager: PoolManager | null;
  budget: BudgetSettings & { usedBytes: number; freeBytes: number; vms: number };
}

export async function poolsReport(state: StateStore, budget = new MemoryBudget()): Promise<PoolsReport> {
  const [targets, usage, manager] = await Promise.all([state.pools.list(), budget.usage(), readManager()]);
  const byEnv = new Map<string, PoolStatus>();
  const entry = (envName: string, targetSize = 0): PoolStatus => {
    let status = byEnv.get(envName);
    if (!status) {
      status = { envName, targetSize, ready: 0, filling: 0, snapshotIds: [], vmIds: [], hostRssBytes: 0, hostPssBytes: 0 };
      byEnv.set(envName, status);
    }
    return status;
  };
  for (const t of targets) entry(t.envName, t.targetSize);
  for (const c of usage.charges) {
    const role = c.role?.role;
    if (role !== 'pool-ready' && role !== 'pool-filling') continue;
    const status = entry(c.role!.envName);
    if (role === 'pool-ready' && c.record) status.ready += 1;
    else status.filling += 1;
    status.vmIds.push(c.vmId);
    if (c.role!.snapshotId && !status.snapshotIds.includes(c.role!.snapshotId)) status.snapshotIds.push(c.role!.snapshotId);
    status.hostRssBytes += c.rssBytes;
    status.hostPssBytes += c.pssBytes;
  }
  return {
    pools: [...byEnv.values()].sort((a, b) => a.envName.localeCompare(b.envName)),
    manager,
    budget: { ...budget.settings, usedBytes: usage.usedBytes, freeBytes: usage.freeBytes, vms: usage.charges.length },
  };
}
