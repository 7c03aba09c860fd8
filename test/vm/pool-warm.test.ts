import { existsSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { execa, type ResultPromise } from 'execa';
import { afterAll, beforeAll, describe, expect, it, onTestFailed } from 'vitest';
import { listVms, qemuAlive } from '../../src/engine/reaper.js';
import { prepareEnv } from '../../src/env/prepare.js';
import { loadSpec, type EnvSpec } from '../../src/env/spec.js';
import { MemoryBudget, budgetSettings } from '../../src/pool/budget.js';
import { vmCharges } from '../../src/pool/charges.js';
import { WarmPools } from '../../src/pool/pool.js';
import { budgetedVmSource } from '../../src/pool/source.js';
import { poolsReport } from '../../src/pool/status.js';
import { SnapshotStore } from '../../src/snapshot/store.js';
import { openState, type StateStore } from '../../src/state/db.js';
import { runTask, type RunTaskOptions } from '../../src/task/run.js';
import type { TaskResult } from '../../src/task/types.js';
import { prewarmHome } from '../../src/util/paths.js';

/**
 * Warm pools and the memory budget with real VMs, on a tiny environment of this file's own
 * (a repository with one file; its setup writes a random marker, so two snapshots of the
 * same inputs differ): a prepare costs a boot and a snapshot, not an `npm ci`.
 */
const ENV = 'pool-tiny';
const TIER_MIB = 768;
const MiB = 2 ** 20;
const SLOW_MS = 240_000;

let spec: EnvSpec;
let state: StateStore;
let firstSnapshotId: string;
const made: string[] = [];

async function makeEnv(): Promise<EnvSpec> {
  const dir = join(prewarmHome(), 'pool-test');
  const repo = join(dir, 'repo');
  const gitEnv = { GIT_AUTHOR_NAME: 't', GIT_AUTHOR_EMAIL: 't@localhost', GIT_COMMITTER_NAME: 't',
    GIT_COMMITTER_EMAIL: 't@localhost', GIT_AUTHOR_DATE: '2024-01-01T00:00:00Z', GIT_COMMITTER_DATE: '2024-01-01T00:00:00Z' };
  if (!existsSync(join(repo, '.git'))) {
    await mkdir(repo, { recursive: true });
    await writeFile(join(repo, 'README.md'), 'pool test\n');
    for (const args of [['init', '-q', '-b', 'main'], ['add', '-A'], ['commit', '-q', '-m', 'init']]) {
      await execa('git', args, { cwd: repo, env: gitEnv });
    }
  }
  const specPath = join(dir, `${ENV}.env.yaml`);
  const text = [`name: ${ENV}`, 'repository:', `  path: ${repo}`,
    'setup: cat /proc/sys/kernel/random/uuid > /root/pool-marker',
    `tier: { memoryMiB: ${TIER_MIB}, vcpus: 2, diskGiB: 8 }`, 'network: { setup: false, tasks: false }', ''].join('\n');
  await writeFile(specPath, text);
  await state.environments.upsert({ name: ENV, specPath, specYaml: text });
  return loadSpec(specPath);
}

/** The task's output: the snapshot's marker, the guest's clock in seconds, and how many
 * warm-up commands (a pool VM runs one before its hand-out) ran in the guest. */
async function markerTask(source: RunTaskOptions): Promise<{ result: TaskResult; marker: string; clockS: number; warmUps: number }> {
  let out = '';
  const result = await runTask(spec, { envName: ENV,
    commands: ['cat /root/pool-marker; date +%s; ls /var/log/prewarm | grep -c ^warm-up- || true'] },
    { ...source, onOutput: (chunk) => { out += chunk.toString(); } });
  if (result.vmId) made.push(result.vmId);
  expect(result.status, result.message ?? '').toBe('succeeded');
  const [marker, clock, warmUps] = out.trim().split('\n');
  return { result, marker, clockS: Number(clock), warmUps: Number(warmUps) };
}

/** VMs of this environment that pools hold, by role file. */
async function poolVms() {
  return (await vmCharges()).filter((c) => c.role?.envName === ENV && c.role.role.startsWith('pool'));
}

describe('warm pools and the memory budget (real VMs)', () => {
  let pools: WarmPools | undefined;

  beforeAll(async () => {
    state = openState();
    spec = await makeEnv();
    firstSnapshotId = (await prepareEnv(spec, { quiet: true })).snapshotId;
    await state.pools.set(ENV, 1);
  }, 900_000);

  afterAll(async () => {
    await pools?.stop();
    await state?.environments.remove(ENV);
    state?.close();
  });

  it('a task takes the pooled VM, and the pool is full again afterwards', async () => {
    onTestFailed(() => console.error('pool test VMs:', made, pools?.list()));
    pools = await WarmPools.start({ state, tickMs: 500 });
    await pools.whenFull({ envName: ENV, timeoutMs: SLOW_MS });
    const [view] = pools.list();
    expect(view).toMatchObject({ envName: ENV, targetSize: 1, ready: 1, snapshotId: firstSnapshotId });
    const pooledId = view.vmIds[0];
    console.log(`idle pooled VM: rss ${Math.round(view.hostRssBytes / MiB)} MiB, ` +
      `pss ${Math.round(view.hostPssBytes / MiB)} MiB, tier ${TIER_MIB} MiB`);
    expect(view.hostPssBytes).toBeLessThan(TIER_MIB * MiB);

    const { result, clockS, warmUps } = await markerTask({ vmSource: pools.vmSource() });
    expect(result.vmId).toBe(pooledId);
    expect(warmUps).toBe(1);
    expect(result.timingsMs.pool).toBeGreaterThanOrEqual(0);
    expect(result.timingsMs.restore).toBeUndefined();
    expect(Math.abs(clockS - Date.now() / 1000)).toBeLessThan(10);
    console.log(`pool hand-out took ${result.timingsMs.pool} ms`);

    await pools.whenFull({ envName: ENV, timeoutMs: SLOW_MS });
    const refilled = pools.list()[0].vmIds;
    expect(refilled).toHaveLength(1);
    expect(refilled[0]).not.toBe(pooledId);
    // Other processes see the same through the VM directories.
    const report = await poolsReport(state);
    expect(report.pools.find((p) => p.envName === ENV)).toMatchObject({ targetSize: 1, ready: 1, vmIds: refilled });
    expect(report.manager?.pid).toBe(process.pid);
  }, SLOW_MS * 2);

  it('a new snapshot replaces the old: no task runs on the old one after it', async () => {
    onTestFailed(() => console.error('pool test VMs:', made, pools?.list()));
    const before = await markerTask({ vmSource: pools!.vmSource() });
    expect(before.result.snapshotId).toBe(firstSnapshotId);
    const oldPoolIds = (await poolVms()).map((c) => c.vmId);

    const second = await prepareEnv(spec, { force: true, quiet: true });
    expect(second.snapshotId).not.toBe(firstSnapshotId);
    // At once, before the pool has noticed: the task is on the new snapshot (restored).
    const after = await markerTask({ vmSource: pools!.vmSource() });
    expect(after.result.snapshotId).toBe(second.snapshotId);
    expect(after.marker).not.toBe(before.marker);
    expect(after.warmUps).toBe(0);
    expect(oldPoolIds).not.toContain(after.result.vmId);
    expect(await pools!.take(ENV, firstSnapshotId)).toBeNull();

    await pools!.whenFull({ envName: ENV, timeoutMs: SLOW_MS });
    await expect.poll(async () => (await poolVms()).map((c) => c.role!.snapshotId), { timeout: 30_000 })
      .toEqual([second.snapshotId]);
    const fromPool = await markerTask({ vmSource: pools!.vmSource() });
    expect(fromPool.result.timingsMs.pool).toBeDefined();
    expect(fromPool.marker).toBe(after.marker);
    const alive = (await listVms()).filter((v) => v.alive).map((v) => v.vmId);
    for (const id of oldPoolIds) expect(alive).not.toContain(id);
    await pools!.stop();
    pools = undefined;
    // Every run makes a snapshot: keep only the newest of this environment.
    const store = await SnapshotStore.open();
    for (const old of (await store.list({ envName: ENV })).slice(1)) await store.remove(old.id);
  }, SLOW_MS * 3);

  it('with a budget too small for a second task, the second is refused or waits, naming the missing memory', async () => {
    onTestFailed(() => console.error('pool test VMs:', made));
    // Only this file's VMs count: other tests run VMs in the same PREWARM_HOME.
    const budget = new MemoryBudget({ ...budgetSettings(), budgetBytes: 1.5 * TIER_MIB * MiB }, {
      charges: async () => (await vmCharges()).filter((c) => c.role?.envName === ENV),
    });
    const first = runTask(spec, { envName: ENV, commands: ['sleep 20'] }, { vmSource: budgetedVmSource({ budget }) });
    await expect.poll(async () => (await budget.usage()).charges.filter((c) => c.record).length,
      { timeout: SLOW_MS, interval: 200 }).toBe(1);

    const refused = await runTask(spec, { envName: ENV, commands: ['true'] },
      { vmSource: budgetedVmSource({ budget, waitMs: 0 }) });
    expect(refused.status).toBe('error');
    expect(refused.message).toMatch(new RegExp('^task on pool-tiny needs 0.8 GiB but only 0.\\d GiB of the 1.1 GiB ' +
      'budget is free \\(0.\\d GiB missing\\); wait for running tasks'));

    const waits: string[] = [];
    const waited = await runTask(spec, { envName: ENV, commands: ['true'] },
      { vmSource: budgetedVmSource({ budget, waitMs: SLOW_MS }), onEvent: (m) => { if (/needs/.test(m)) waits.push(m); } });
    expect(waits).toHaveLength(1);
    expect(waits[0]).toMatch(/missing/);
    expect((await first).status).toBe('succeeded');
    expect(waited.status).toBe('succeeded');
    expect(Date.parse(waited.startedAt)).toBeLessThan(Date.parse((await first).finishedAt));
  }, SLOW_MS * 2);

  it('SIGKILL of `pool run` with a full pool, then a new start: no orphan VMs, the pool full again', async () => {
    let child: ResultPromise | undefined;
    onTestFailed(() => console.error('pool run output:', child?.pid));
    const start = () => {
      const script = `const { reapLeftovers } = await import(${JSON.stringify(resolve('src/cli/startup.ts'))});\n` +
        `const { runPools } = await import(${JSON.stringify(resolve('src/cli/commands/pool.ts'))});\n` +
        'await reapLeftovers(); await runPools((line) => console.log(line));';
      return execa('node', ['--import', 'tsx', '--input-type=module', '-e', script],
        { env: { PREWARM_HOME: prewarmHome() }, reject: false, all: true });
    };
    const fullUnder = async (pid: number) => {
      await expect.poll(async () => {
        const report = await poolsReport(state);
        const pool = report.pools.find((p) => p.envName === ENV);
        return report.manager?.pid === pid && pool?.ready === 1 && pool.filling === 0;
      }, { timeout: SLOW_MS, interval: 500 }).toBe(true);
      return (await poolVms()).map((c) => c.vmId);
    };

    child = start();
    const oldIds = await fullUnder(child.pid!);
    const oldRecords = (await listVms()).filter((v) => oldIds.includes(v.vmId));
    expect(oldRecords).toHaveLength(1);
    child.kill('SIGKILL');
    await child;
    // PDEATHSIG ends the pool's QEMU with it.
    await expect.poll(() => oldRecords.some((r) => qemuAlive(r, r.dir)), { timeout: 15_000 }).toBe(false);

    child = start();
    const newIds = await fullUnder(child.pid!);
    expect(newIds).toHaveLength(1);
    expect(newIds).not.toContain(oldIds[0]);
    expect((await listVms()).map((v) => v.vmId)).not.toContain(oldIds[0]);
    child.kill('SIGTERM');
    const ended = await child;
    expect((await poolVms()).map((c) => c.vmId), String(ended.all).slice(-2000)).toEqual([]);
    expect(existsSync(join(prewarmHome(), 'pool-manager.json'))).toBe(false);
  }, SLOW_MS * 3);
});
