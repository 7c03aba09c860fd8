import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { ResultPromise } from 'execa';
import { stringify } from 'yaml';
import { afterAll, beforeAll, describe, expect, it, onTestFailed } from 'vitest';
import { tokenPath } from '../../src/api/auth.js';
import { isAlive } from '../../src/engine/proc.js';
import { openState } from '../../src/state/db.js';
import { PrewarmClient } from '../../src/sdk/client.js';
import { paths } from '../../src/util/paths.js';
import { prewarmCli } from './cli.js';
import { TINY_TIER, makeRepo, vmDirsOwnedBy } from './tiny-env.js';

/**
 * `prewarm serve` as its own process, with real VMs and the real memory budget: twenty tasks
 * submitted at once all finish, never more at once than the budget holds; then the service
 * is SIGKILLed with tasks running and queued, and a new start leaves no task `running`, runs
 * the queued ones and leaves no VM of the dead service behind.
 */

const ENV = 'serve-proc';
const MINUTE = 60_000;
/** Two tiny-tier tasks fit (2 x 768 MiB), a third does not. */
const BUDGET_MIB = 1700;

interface Served {
  child: ResultPromise;
  url: string;
  api: PrewarmClient;
  stderr: () => string;
}

/** Start `prewarm serve` on a free port and wait until it says where it listens. */
async function serve(args: string[]): Promise<Served> {
  const child = prewarmCli(['serve', '--port', '0', ...args], {
    env: { PREWARM_MEMORY_BUDGET_MIB: String(BUDGET_MIB), PREWARM_LOG_LEVEL: 'warn' },
  });
  let stderr = '';
  const url = await new Promise<string>((resolve, reject) => {
    child.stderr!.on('data', (chunk: Buffer) => {
      stderr += chunk.toString();
      const found = /serving on (http:\/\/\S+)/.exec(stderr);
      if (found) resolve(found[1]);
    });
    void child.then((r) => reject(new Error(`prewarm serve exited (${r.exitCode}) before listening:\n${stderr}`)));
  });
  const token = (await readFile(tokenPath(), 'utf8')).trim();
  return { child, url, api: new PrewarmClient({ baseUrl: url, token }), stderr: () => stderr };
}

/** Sample how many VMs process `pid` runs, every 100 ms, until stopped; returns the maximum. */
function sampleVms(pid: number): { stop: () => number } {
  let max = 0;
  const timer = setInterval(() => { max = Math.max(max, vmDirsOwnedBy(pid).length); }, 100);
  return { stop: () => { clearInterval(timer); return max; } };
}

describe('prewarm serve as a process (real VMs, real budget)', () => {
  let work: string;
  let served: Served | undefined;
  const pids: number[] = [];

  beforeAll(async () => {
    await mkdir(paths.tmp(), { recursive: true });
    work = await mkdtemp(join(paths.tmp(), 'test-serve-proc-'));
    const repo = join(work, 'repo');
    await makeRepo(repo, { 'README.md': `# ${ENV}\n`, '.gitignore': 'OUT-*.log\n' });

    served = await serve(['--concurrency', '8']);
    pids.push(served.child.pid!);
    const spec = { name: ENV, repository: { path: repo }, setup: 'true', tier: TINY_TIER };
    await served.api.createEnvironment({ spec: stringify(spec) });
    const job = await served.api.prepare(ENV, { timeoutMs: 10 * MINUTE, pollMs: 1000 });
    expect(job.error, job.outputTail.slice(-2000)).toBeNull();
  }, 15 * MINUTE);

  afterAll(async () => {
    served?.child.kill('SIGKILL');
    await served?.child;
    // Whatever the tests did, the next prewarm start tidies up; check that it did.
    await prewarmCli(['vm', 'ls']);
    for (const pid of pids) expect(vmDirsOwnedBy(pid), `VMs of service pid ${pid}`).toEqual([]);
    await rm(work, { recursive: true, force: true });
  });

  it('refuses a second service on the same PREWARM_HOME, naming the first', async () => {
    const second = await prewarmCli(['serve', '--port', '0'], { env: { PREWARM_LOG_LEVEL: 'warn' } });
    expect(second.exitCode).toBe(1);
    expect(second.stderr).toContain(`another prewarm serve (process ${served!.child.pid}, on 127.0.0.1:0`);
    expect(second.stderr).toContain('one service per PREWARM_HOME');
  });

  it('accepts twenty tasks submitted at once and finishes them all, two at a time as the budget allows', async () => {
    const { api, child } = served!;
    onTestFailed(() => { process.stderr.write(`serve stderr:\n${served?.stderr()}\n`); });
    const vms = sampleVms(child.pid!);

    const submitted = await Promise.all(Array.from({ length: 20 }, (_, i) =>
      api.createTask({ envName: ENV, commands: [`echo task ${i} > RESULT-${i}.txt`] })));
    expect(new Set(submitted.map((t) => t.id)).size).toBe(20);
    for (const task of submitted) expect(['queued', 'running']).toContain(task.status);

    const done = await Promise.all(submitted.map((t) => api.waitForTask(t.id, { timeoutMs: 15 * MINUTE, pollMs: 500 })));
    const maxVms = vms.stop();
    expect(done.map((t) => `${t.id} ${t.status} ${t.error ?? ''}`))
      .toEqual(submitted.map((t) => `${t.id} succeeded `));
    for (const [i, task] of submitted.entries()) {
      expect(await api.getDiff(task.id)).toContain(`+++ b/RESULT-${i}.txt`);
    }

    // Eight claimed at once by the queue, but the 1.7 GiB budget holds two tiny VMs: the
    // others waited for memory, and said so in their logs.
    expect(maxVms).toBe(2);
    const waited: string[] = [];
    for (const task of submitted) {
      const events: string[] = [];
      for await (const entry of api.logEntries(task.id)) if (entry.stream === 'event') events.push(entry.text ?? '');
      if (events.some((e) => /needs 0\.8 GiB but only .* missing/.test(e))) waited.push(task.id);
    }
    expect(waited.length).toBeGreaterThan(0);

    const metrics = await api.metrics();
    expect(metrics).toMatch(/prewarm_task_duration_seconds_count\{status="succeeded"\} (2\d|[3-9]\d)/);
    expect(vmDirsOwnedBy(child.pid!)).toEqual([]);
  }, 20 * MINUTE);

  it('SIGKILLed with tasks running and queued: the next start marks the running ones error and runs the queued', async () => {
    onTestFailed(() => { process.stderr.write(`serve stderr:\n${served?.stderr()}\n`); });
    served!.child.kill('SIGTERM');
    expect((await served!.child).exitCode).toBe(0);

    served = await serve(['--concurrency', '2']);
    pids.push(served.child.pid!);
    let api = served.api;
    const running = await Promise.all([0, 1].map(() => api.createTask({ envName: ENV, commands: ['sleep 600'] })));
    const queued = await Promise.all([0, 1].map((i) =>
      api.createTask({ envName: ENV, commands: [`echo after restart ${i} > AFTER-${i}.txt`] })));
    await expect.poll(async () => {
      const tasks = await Promise.all(running.map((t) => api.getTask(t.id)));
      return tasks.every((t) => t.status === 'running' && t.vmId !== null);
    }, { timeout: 5 * MINUTE, interval: 500 }).toBe(true);
    expect((await Promise.all(queued.map((t) => api.getTask(t.id)))).map((t) => t.status)).toEqual(['queued', 'queued']);

    const deadPid = served.child.pid!;
    const qemuPids = vmDirsOwnedBy(deadPid).map((id) =>
      (JSON.parse(readFileSync(join(paths.vms(), id, 'vm.json'), 'utf8')) as { qemuPid: number }).qemuPid);
    expect(qemuPids).toHaveLength(2);
    served.child.kill('SIGKILL');
    await served.child;
    // The VMs die with their owner (parent-death signal), before anything restarts.
    await expect.poll(() => qemuPids.filter((pid) => isAlive(pid)), { timeout: 30_000, interval: 200 }).toEqual([]);
    const state = openState();
    try {
      for (const t of running) expect((await state.tasks.get(t.id))?.status).toBe('running');
    } finally {
      state.close();
    }

    served = await serve(['--concurrency', '2']);
    pids.push(served.child.pid!);
    api = served.api;
    expect(served.stderr()).toMatch(/2 task\(s\) were running in a prewarm process that has died; marked error/);
    for (const t of running) {
      const after = await api.getTask(t.id);
      expect(after.status).toBe('error');
      expect(after.error).toMatch(/prewarm stopped while the task was running/);
    }
    for (const [i, t] of queued.entries()) {
      const after = await api.waitForTask(t.id, { timeoutMs: 5 * MINUTE, pollMs: 500 });
      expect(after.status, after.error ?? '').toBe('succeeded');
      expect(await api.getDiff(t.id)).toContain(`+++ b/AFTER-${i}.txt`);
    }

    // Nothing of the dead service is left: no VM directory (sockets, overlay), no process.
    expect(vmDirsOwnedBy(deadPid)).toEqual([]);
    const leftovers = existsSync(paths.vms()) ? readdirSync(paths.vms()).filter((id) => !existsSync(join(paths.vms(), id, 'vm.json'))) : [];
    expect(leftovers, 'VM directories without a record').toEqual([]);
    expect(await api.listTasks({ env: ENV, status: 'running' })).toEqual([]);

    served.child.kill('SIGTERM');
    expect((await served.child).exitCode).toBe(0);
    expect(vmDirsOwnedBy(served.child.pid!)).toEqual([]);
    served = undefined;
  }, 20 * MINUTE);
});
