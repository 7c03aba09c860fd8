import { spawn } from 'node:child_process';
import { join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { describe, expect, it } from 'vitest';
import { openState, type Runner } from '../../src/state/db.js';
import { InputError, NotFoundError } from '../../src/util/errors.js';
import { useTempState } from './temp-state.js';

const REPO_ROOT = resolve(fileURLToPath(import.meta.url), '../../..');
const RUNNER_A: Runner = { pid: 1001, startTime: '5000' };
const RUNNER_B: Runner = { pid: 1002, startTime: '6000' };


const t = useTempState();

describe('tasks', () => {
  it('creates queued tasks, claims the oldest first, and finishes them', async () => {
    const first = await t.state.tasks.create({ envName: 'web', request: { commands: ['npm test'], commit: 'abc' } });
    const second = await t.state.tasks.create({ envName: 'api', request: { commands: ['pytest'] } });
    expect(first.id).toMatch(/^task-[0-9a-f]{12}$/);
    expect(first).toMatchObject({ status: 'queued', runner: null, startedAt: null, result: null });

    t.clockMs += 10;
    const claimed = await t.state.tasks.claimNext(RUNNER_A);
    expect(claimed).toMatchObject({ id: first.id, status: 'running', runner: RUNNER_A });
    expect(claimed?.startedAt?.getTime()).toBe(t.clockMs);
    expect(await t.state.tasks.claimNext(RUNNER_B, { envName: 'web' })).toBeUndefined();

    await t.state.tasks.attachVm(first.id, { vmId: 'vm-1', snapshotId: 'snap-1' });
    const result = { exitCode: 0, peakMemoryBytes: 612 * 2 ** 20, commands: [{ exitCode: 0 }] };
    expect(await t.state.tasks.markFinished(first.id, 'succeeded', result)).toBe(true);
    expect(await t.state.tasks.get(first.id)).toMatchObject({
      status: 'succeeded', result, peakMemoryBytes: 612 * 2 ** 20, vmId: 'vm-1', snapshotId: 'snap-1',
    });

    // A finished task stays finished; a queued one can be cancelled but not succeed.
    expect(await t.state.tasks.markFinished(first.id, 'failed', null)).toBe(false);
    expect(await t.state.tasks.markError(first.id, 'late')).toBe(false);
    expect(await t.state.tasks.markFinished(second.id, 'succeeded', null)).toBe(false);
    expect(await t.state.tasks.markFinished(second.id, 'cancelled', null)).toBe(true);
    await expect(t.state.tasks.markFinished(second.id, 'running' as 'failed', null)).rejects.toThrow(InputError);
    await expect(t.state.tasks.markError('task-000000000000', 'x')).rejects.toThrow(NotFoundError);
    expect(await t.state.tasks.get('task-000000000000')).toBeUndefined();
  });

  it('lists newest first, filtered by env, status and limit', async () => {
    const ids: string[] = [];
    for (const envName of ['web', 'api', 'web', 'web']) {
      t.clockMs += 1;
      ids.push((await t.state.tasks.create({ envName, request: { commands: [] } })).id);
    }
    await t.state.tasks.claimNext(RUNNER_A);
    await t.state.tasks.markError(ids[1], 'no snapshot');

    expect((await t.state.tasks.list()).map((t) => t.id)).toEqual([...ids].reverse());
    expect((await t.state.tasks.list({ envName: 'web', limit: 2 })).map((t) => t.id)).toEqual([ids[3], ids[2]]);
    expect((await t.state.tasks.list({ status: 'running' })).map((t) => t.id)).toEqual([ids[0]]);
    expect((await t.state.tasks.list({ status: ['error', 'running'] })).map((t) => t.id)).toEqual([ids[1], ids[0]]);
    expect((await t.state.tasks.get(ids[1]))?.error).toBe('no snapshot');
    await expect(t.state.tasks.list({ limit: 0 })).rejects.toThrow(InputError);
  });

  it('recovers running tasks whose runner is dead, and only those', async () => {
    for (let i = 0; i < 3; i++) await t.state.tasks.create({ envName: 'web', request: { commands: [] } });
    const dead = await t.state.tasks.claimNext(RUNNER_A);
    const alive = await t.state.tasks.claimNext(RUNNER_B);
    const queued = (await t.state.tasks.list({ status: 'queued' }))[0];

    const recovered = await t.state.tasks.recoverOrphans((runner) => runner.pid === RUNNER_B.pid);
    expect(recovered.map((t) => t.id)).toEqual([dead!.id]);
    expect(recovered[0]).toMatchObject({
      status: 'error',
      error: 'prewarm stopped while the task was running (runner pid 1001 is gone); submit it again',
    });
    expect((await t.state.tasks.get(alive!.id))?.status).toBe('running');
    expect((await t.state.tasks.get(queued.id))?.status).toBe('queued');

    // The presumed-dead runner reporting late does not overwrite the recovery.
    expect(await t.state.tasks.markFinished(dead!.id, 'succeeded', {})).toBe(false);
    expect(await t.state.tasks.recoverOrphans(() => true)).toEqual([]);
  });

  it('reports recent peaks for right-sizing', async () => {
    const peaks: [string, number | undefined][] = [
      ['succeeded', 100], ['oom_killed', 2048], ['failed', undefined], ['succeeded', 300],
    ];
    for (const [status, peak] of peaks) {
      t.clockMs += 1;
      await t.state.tasks.create({ envName: 'web', request: { commands: [] } });
      const task = await t.state.tasks.claimNext(RUNNER_A);
      await t.state.tasks.markFinished(task!.id, status as 'succeeded', { peakMemoryBytes: peak });
    }
    const recent = await t.state.tasks.peaks('web', 2);
    expect(recent.map((p) => [p.status, p.peakMemoryBytes])).toEqual([['succeeded', 300], ['oom_killed', 2048]]);
    expect(await t.state.tasks.peaks('api')).toEqual([]);
  });

  it('never hands one task to two connections to the same file', async () => {
    const other = openState(t.path);
    try {
      for (let round = 0; round < 20; round++) {
        for (let i = 0; i < 10; i++) await t.state.tasks.create({ envName: 'web', request: { round } });
        const seen = new Set<string>();
        // Alternate connections, with claims issued together, until the queue is empty.
        for (;;) {
          const claims = await Promise.all([t.state.tasks.claimNext(RUNNER_A), other.tasks.claimNext(RUNNER_B)]);
          const ids = claims.filter((t) => t !== undefined).map((t) => t.id);
          for (const id of ids) {
            expect(seen.has(id)).toBe(false);
            seen.add(id);
          }
          if (ids.length < 2) break;
        }
        expect(seen.size).toBe(10);
      }
    } finally {
      other.close();
    }
  });

  it('never hands one task to two processes claiming at once', async () => {
    const TASKS = 300;
    const WORKERS = 3;
    for (let i = 0; i < TASKS; i++) await t.state.tasks.create({ envName: 'web', request: { i } });

    const results = await claimInChildren(t.path, WORKERS);
    const all = results.flatMap((r) => r.ids);
    // They really raced: more than one process won some of the claims.
    expect(results.filter((r) => r.ids.length > 0).length).toBeGreaterThan(1);
    expect(new Set(all).size).toBe(all.length);
    expect(all.length).toBe(TASKS);
    for (const { pid, ids } of results) {
      for (const id of ids.slice(0, 5)) expect((await t.state.tasks.get(id))?.runner?.pid).toBe(pid);
    }
    expect(await t.state.tasks.list({ status: ['queued', 'running'] })).toEqual([]);
  }, 60_000);
});

interface Claimer {
  pid: number;
  ready: Promise<void>;
  done: Promise<string[]>;
  go(): void;
}

/**
 * Separate processes that each open the file, wait until all are ready, then claim and
 * finish tasks until the queue is empty. Returns the ids each one claimed.
 */
async function claimInChildren(dbPath: string, count: number): Promise<{ pid: number; ids: string[] }[]> {
  const claimers = Array.from({ length: count }, () => startClaimer(dbPath));
  await Promise.all(claimers.map((c) => c.ready));
  for (const claimer of claimers) claimer.go();
  return Promise.all(claimers.map(async (c) => ({ pid: c.pid, ids: await c.done })));
}

function startClaimer(dbPath: string): Claimer {
  const dbModule = pathToFileURL(join(REPO_ROOT, 'src/state/db.ts')).href;
  const script = `
    const { openState } = await import(${JSON.stringify(dbModule)});
    const state = openState(${JSON.stringify(dbPath)});
    const runner = { pid: process.pid, startTime: 'child' };
    process.stdout.write('ready\\n');
    await new Promise((go) => process.stdin.once('data', go));
    const ids = [];
    for (let task; (task = await state.tasks.claimNext(runner)); ) {
      ids.push(task.id);
      await state.tasks.markFinished(task.id, 'succeeded', { peakMemoryBytes: 1 });
    }
    state.close();
    process.stdout.write(JSON.stringify(ids) + '\\n');
    process.exit(0);
  `;
  const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
    cwd: REPO_ROOT,
  });
  let stdout = '';
  let stderr = '';
  child.stderr.on('data', (chunk) => (stderr += chunk));
  const ready = new Promise<void>((resolveReady) => {
    child.stdout.on('data', (chunk) => {
      stdout += chunk;
      if (stdout.startsWith('ready\n')) resolveReady();
    });
  });
  const done = new Promise<string[]>((resolveDone, reject) => {
    child.on('error', reject);
    child.on('exit', (code) => {
      if (code !== 0) return reject(new Error(`claimer pid ${child.pid} exited ${code}: ${stderr}`));
      resolveDone(JSON.parse(stdout.split('\n')[1]) as string[]);
    });
  });
  // A child that dies before "ready" must fail the test, not hang it.
  const readyOrDied = Promise.race([ready, done.then(() => undefined)]);
  return { pid: child.pid!, ready: readyOrDied, done, go: () => child.stdin.write('go\n') };
}
