import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { selfRecord } from '../../src/engine/proc.js';
import type { VmRecord } from '../../src/engine/types.js';
import { budgetSettings, MemoryBudget, type AdmitRequest } from '../../src/pool/budget.js';
import type { RoleInput, VmCharge } from '../../src/pool/charges.js';
import { Waiters } from '../../src/pool/waiters.js';
import { BudgetError, CancelledError, InputError } from '../../src/util/errors.js';

const GiB = 2 ** 30;
const MiB = 2 ** 20;

/** A host with fake VMs: charges come from `vms`, reservations and evictions change it. */
class FakeHost {
  vms: VmCharge[] = [];
  evicted: string[] = [];

  add(vmId: string, pssBytes: number, role?: RoleInput): void {
    const file = role ? { ...role, owner: selfRecord(), updatedAt: '' } : null;
    const reservedBytes = role?.reservedBytes ?? 0;
    this.vms.push({ vmId, dir: `/fake/${vmId}`, record: {} as VmRecord, role: file, rssBytes: pssBytes, pssBytes,
      reservedBytes, chargeBytes: Math.max(pssBytes, reservedBytes) });
  }

  remove(vmId: string): void {
    this.vms = this.vms.filter((v) => v.vmId !== vmId);
  }
}

let dir: string;
let host: FakeHost;

function budget(budgetMiB: number, overcommit = 1): MemoryBudget {
  return new MemoryBudget({ budgetBytes: budgetMiB * MiB, overcommit, waitMs: 0, source: 'test' }, {
    charges: async () => host.vms.map((v) => ({ ...v })),
    evict: async (c) => { host.evicted.push(c.vmId); host.remove(c.vmId); },
    writeRole: async (vmId, role) => { host.remove(vmId); host.add(vmId, 0, role); },
    lockPath: join(dir, 'lock'),
    waiters: new Waiters(dir),
    pollMs: 20,
  });
}

const task = (vmId: string, bytes: number): AdmitRequest =>
  ({ vmId, bytes, role: 'task', envName: 'hello-node', snapshotId: 'snap-1', what: 'task on hello-node' });
const refill = (vmId: string, bytes: number): AdmitRequest =>
  ({ vmId, bytes, role: 'pool-filling', envName: 'hello-node', snapshotId: 'snap-1', what: 'a pool VM for hello-node' });
const poolVm = { role: 'pool-ready', reservedBytes: 0, envName: 'hello-node', snapshotId: 'snap-1' } as const;

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'pool-budget-'));
  host = new FakeHost();
});
afterEach(() => rm(dir, { recursive: true, force: true }));

describe('budget settings', () => {
  it('defaults to 75% of host memory less 1 GiB, overcommit 1, five minutes of waiting', () => {
    const s = budgetSettings({}, 24 * GiB);
    expect(s.budgetBytes).toBe(17 * GiB);
    expect(s.overcommit).toBe(1);
    expect(s.waitMs).toBe(300_000);
  });

  it('reads the environment and names a bad variable', () => {
    const env = { PREWARM_MEMORY_BUDGET_MIB: '6144', PREWARM_OVERCOMMIT: '2', PREWARM_ADMIT_WAIT_SECONDS: '0' };
    const s = budgetSettings(env, 24 * GiB);
    expect(s).toMatchObject({ budgetBytes: 6 * GiB, overcommit: 2, waitMs: 0, source: 'PREWARM_MEMORY_BUDGET_MIB' });
    expect(() => budgetSettings({ PREWARM_OVERCOMMIT: '0.5' })).toThrow(InputError);
    expect(() => budgetSettings({ PREWARM_MEMORY_BUDGET_MIB: 'lots' })).toThrow(/PREWARM_MEMORY_BUDGET_MIB/);
  });

  it('reserves tier / overcommit for a task', () => {
    expect(budget(6144, 2).taskReservationBytes(2048)).toBe(GiB);
  });
});

describe('admission', () => {
  it('admits what fits and records the reservation', async () => {
    await budget(6144).admit(task('vm-a', 2 * GiB));
    expect(host.vms).toMatchObject([{ vmId: 'vm-a', chargeBytes: 2 * GiB, role: { role: 'task' } }]);
  });

  it('refuses a second task with how much memory is missing', async () => {
    host.add('vm-other', 3686 * MiB);
    const b = budget(6144);
    await b.admit(task('vm-a', 2048 * MiB));
    const err = await b.admit(task('vm-b', 1946 * MiB)).catch((e) => e);
    expect(err).toBeInstanceOf(BudgetError);
    expect(err.message).toBe('task on hello-node needs 1.9 GiB but only 0.4 GiB of the 6 GiB budget is free ' +
      '(1.5 GiB missing); wait for running tasks, lower pool sizes, or raise PREWARM_MEMORY_BUDGET_MIB');
    expect(err.missingBytes).toBe(1536 * MiB);
  });

  it('waits for room when asked to, telling once why', async () => {
    const b = budget(4096);
    await b.admit(task('vm-a', 3 * GiB));
    const waits: string[] = [];
    setTimeout(() => host.remove('vm-a'), 150);
    await b.admit(task('vm-b', 2 * GiB), { waitMs: 5000, onWait: (w) => waits.push(w.message) });
    expect(waits).toHaveLength(1);
    expect(waits[0]).toMatch(/needs 2 GiB but only 1 GiB .* \(1 GiB missing\)/);
    expect(host.vms.map((v) => v.vmId)).toEqual(['vm-b']);
  });

  it('stops waiting when its signal aborts, with the reason and its waiting room given back', async () => {
    const b = budget(4096);
    await b.admit(task('vm-a', 3 * GiB));
    const cancel = new AbortController();
    setTimeout(() => cancel.abort(new CancelledError('cancelled through the API')), 100);
    const startedAt = Date.now();
    const err = await b.admit(task('vm-b', 2 * GiB), { waitMs: 60_000, signal: cancel.signal }).catch((e) => e);
    expect(err).toBeInstanceOf(CancelledError);
    expect(err.message).toBe('cancelled through the API');
    expect(Date.now() - startedAt).toBeLessThan(10_000);
    expect(host.vms.map((v) => v.vmId)).toEqual(['vm-a']);
    // The memory it was waiting for is no longer held back from pool refills.
    expect(await new Waiters(dir).totalBytes()).toBe(0);
  });

  it('admits a prepare as a task: it pushes idle pool VMs out and refills leave it its room', async () => {
    host.add('vm-pool-1', 1 * GiB, poolVm);
    const b = budget(4096);
    await b.admit({ ...task('vm-prep', 3.5 * GiB), role: 'prepare', what: 'the prepare of hello-node' });
    expect(host.evicted).toEqual(['vm-pool-1']);
    expect(host.vms.find((v) => v.vmId === 'vm-prep')?.role?.role).toBe('prepare');
    const err = await b.admit(refill('vm-pool-2', 1 * GiB)).catch((e) => e);
    expect(err).toBeInstanceOf(BudgetError);
  });

  it('refuses at once what the whole budget cannot hold, even when asked to wait', async () => {
    const err = await budget(1024).admit(task('vm-a', 2 * GiB), { waitMs: 60_000 }).catch((e) => e);
    expect(err.message).toMatch(/needs 2 GiB but the whole 1 GiB budget is smaller/);
  });

  it('pushes idle pool VMs out for a task, largest first, only as many as needed', async () => {
    host.add('vm-pool-1', 300 * MiB, poolVm);
    host.add('vm-pool-2', 500 * MiB, poolVm);
    host.add('vm-busy', 3 * GiB, { ...poolVm, role: 'task', reservedBytes: 3 * GiB });
    await budget(4096).admit(task('vm-a', 600 * MiB));
    expect(host.evicted).toEqual(['vm-pool-2']);
    expect(host.vms.map((v) => v.vmId).sort()).toEqual(['vm-a', 'vm-busy', 'vm-pool-1']);
  });

  it('keeps pool VMs when pushing them out would not make room anyway', async () => {
    host.add('vm-pool', 500 * MiB, poolVm);
    host.add('vm-busy', 3 * GiB);
    await expect(budget(4096).admit(task('vm-a', 1.5 * GiB))).rejects.toThrow(BudgetError);
    expect(host.evicted).toEqual([]);
  });

  it('never pushes anything out for a pool refill, and leaves the room waiting tasks ask for', async () => {
    host.add('vm-pool', 300 * MiB, poolVm);
    host.add('vm-busy', 3.5 * GiB);
    const b = budget(4096);
    await expect(b.admit(refill('vm-r', 1 * GiB))).rejects.toThrow(/a pool VM for hello-node needs 1 GiB/);
    expect(host.evicted).toEqual([]);

    const waiting = b.admit(task('vm-t', 1 * GiB), { waitMs: 5000 });
    await new Promise((r) => setTimeout(r, 100));
    host.remove('vm-busy');
    // 3.7 GiB are free now, but a task waits for 1 GiB of it.
    await expect(b.admit(refill('vm-r2', 3 * GiB))).rejects.toThrow(BudgetError);
    await waiting;
    await b.admit(refill('vm-r3', 1 * GiB));
  });

  it('lets exactly one of two concurrent admissions take the last room', async () => {
    const b = budget(3072);
    const results = await Promise.allSettled([b.admit(task('vm-a', 2 * GiB)), b.admit(task('vm-b', 2 * GiB))]);
    expect(results.map((r) => r.status).sort()).toEqual(['fulfilled', 'rejected']);
  });

  it('hands a pool VM to a task by raising its charge to the reservation', async () => {
    host.add('vm-pool', 400 * MiB, { ...poolVm, role: 'task' });
    host.add('vm-busy', 2 * GiB);
    await budget(4096).admit(task('vm-pool', 2 * GiB));
    expect(host.vms.find((v) => v.vmId === 'vm-pool')).toMatchObject({ chargeBytes: 2 * GiB });
    await expect(budget(4096).admit(task('vm-pool', 2.5 * GiB))).rejects.toThrow(/needs 2.5 GiB but only 2 GiB/);
  });
});
