import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';

// A fresh PREWARM_HOME (state, token, specs) for this file, set before prewarm is imported.
const home = mkdtempSync(join(tmpdir(), 'prewarm-api-queue-'));
const previousHome = process.env.PREWARM_HOME;
process.env.PREWARM_HOME = home;

const { openState } = await import('../../src/state/db.js');
const { startService } = await import('../../src/api/service.js');
const { PrewarmClient } = await import('../../src/sdk/client.js');
type Service = import('../../src/api/service.js').Service;
type State = import('../../src/state/db.js').State;
type TaskRunner = import('../../src/api/runner.js').TaskRunner;

const SPEC = 'name: web\nrepository:\n  path: /srv/repos/web\nsetup: npm ci\ntier: small\n';

/**
 * A runner that boots nothing: it writes a log line and a diff, holds the task for
 * `holdMs` (or until aborted), then records success. It counts how many ran at once.
 */
function fakeRunner(state: () => State, holdMs: number) {
  const stats = { running: 0, maxRunning: 0, started: [] as string[], ran: [] as string[], aborted: [] as string[] };
  const runner: TaskRunner = {
    async run(task, spec, signal) {
      stats.running += 1;
      stats.started.push(task.id);
      stats.maxRunning = Math.max(stats.maxRunning, stats.running);
      try {
        await state().taskLogs.append(task.id, 'output', `running ${task.id} on ${spec.name}\n`);
        await new Promise<void>((resolve) => {
          if (signal.aborted) return resolve();
          const timer = setTimeout(resolve, holdMs);
          signal.addEventListener('abort', () => {
            clearTimeout(timer);
            resolve();
          }, { once: true });
        });
        if (signal.aborted) {
          stats.aborted.push(task.id);
          return;
        }
        await state().taskLogs.putDiff(task.id, { patch: `diff for ${task.id}\n`, stats: {}, tooLarge: false });
        await state().tasks.markFinished(task.id, 'succeeded', { timingsMs: { restore: 200 } });
        stats.ran.push(task.id);
      } finally {
        stats.running -= 1;
      }
    },
  };
  return { runner, stats };
}

let service: Service | undefined;

async function start(runner: TaskRunner, concurrency = 2): Promise<Service> {
  service = await startService({ port: 0, runner, concurrency, queuePollMs: 50, logPollMs: 20 });
  return service;
}

function client(s: Service) {
  return new PrewarmClient({ baseUrl: s.url, token: s.token });
}

afterEach(async () => {
  await service?.shutdown(0);
  service = undefined;
});

afterAll(() => {
  process.env.PREWARM_HOME = previousHome;
  rmSync(home, { recursive: true, force: true });
});

describe('task queue', () => {
  it('accepts twenty tasks submitted at once and runs them all, two at a time', async () => {
    const { runner, stats } = fakeRunner(() => service!.state, 30);
    const s = await start(runner, 2);
    const api = client(s);
    await api.createEnvironment({ spec: SPEC });

    const submitted = await Promise.all(Array.from({ length: 20 }, (_, i) =>
      api.createTask({ envName: 'web', commands: [`echo ${i}`] })));
    expect(new Set(submitted.map((t) => t.id)).size).toBe(20);
    expect(submitted.every((t) => t.status === 'queued' || t.status === 'running')).toBe(true);

    const finished = await Promise.all(submitted.map((t) => api.waitForTask(t.id, { timeoutMs: 20_000, pollMs: 50 })));
    expect(finished.map((t) => t.status)).toEqual(Array(20).fill('succeeded'));
    expect(stats.ran.sort()).toEqual(submitted.map((t) => t.id).sort());
    expect(stats.maxRunning).toBe(2);

    const metrics = await api.metrics();
    expect(metrics).toContain('prewarm_task_duration_seconds_count{status="succeeded"} 20');
    expect(metrics).toContain('prewarm_restore_seconds_count 20');
  });

  it('streams a task log through the client and serves its diff', async () => {
    const { runner } = fakeRunner(() => service!.state, 100);
    const s = await start(runner);
    const api = client(s);
    await api.createEnvironment({ spec: SPEC });
    const task = await api.createTask({ envName: 'web', commands: ['true'] });

    const chunks: (string | Buffer)[] = [];
    for await (const chunk of api.streamLog(task.id)) chunks.push(chunk);
    expect(chunks).toEqual([`running ${task.id} on web\n`]);
    expect((await api.getTask(task.id)).status).toBe('succeeded');
    expect(await api.getDiff(task.id)).toBe(`diff for ${task.id}\n`);

    const err = await api.getTask('task-000000000000').catch((e: unknown) => e);
    expect(err).toMatchObject({ name: 'PrewarmApiError', status: 404, code: 'NOT_FOUND' });
    expect((err as Error).message).toContain('task-000000000000');
    const bad = await api.createTask({ envName: 'web', commands: [] }).catch((e: unknown) => e);
    expect(bad).toMatchObject({ status: 400, fields: [expect.objectContaining({ field: 'commands' })] });
    const wrong = await new PrewarmClient({ baseUrl: s.url, token: 'nope' }).listEnvironments().catch((e: unknown) => e);
    expect(wrong).toMatchObject({ status: 401, code: 'UNAUTHORIZED' });
  });

  it('a log stream gets chunks and the end as they happen in the service, not at its next poll', async () => {
    const runner: TaskRunner = {
      async run(task) {
        for (const text of ['one\n', 'two\n']) {
          await new Promise((r) => setTimeout(r, 300));
          await service!.state.taskLogs.append(task.id, 'output', text);
        }
        await service!.state.tasks.markFinished(task.id, 'succeeded', {});
      },
    };
    // A poll once a minute: only the in-process wake-ups can end this stream in time.
    service = await startService({ port: 0, runner, concurrency: 1, queuePollMs: 50, logPollMs: 60_000 });
    const api = client(service);
    await api.createEnvironment({ spec: SPEC });
    const startedAt = Date.now();
    const task = await api.createTask({ envName: 'web', commands: ['true'] });
    const chunks: string[] = [];
    for await (const chunk of api.streamLog(task.id)) chunks.push(String(chunk));
    expect(chunks).toEqual(['one\n', 'two\n']);
    expect(Date.now() - startedAt).toBeLessThan(20_000);
  }, 40_000);

  it('cancels a running task: marked cancelled, its runner aborted, the slot freed', async () => {
    const { runner, stats } = fakeRunner(() => service!.state, 60_000);
    const s = await start(runner, 1);
    const api = client(s);
    await api.createEnvironment({ spec: SPEC });
    const first = await api.createTask({ envName: 'web', commands: ['sleep 60'] });
    const second = await api.createTask({ envName: 'web', commands: ['sleep 60'] });
    // 'running' is stored when the queue claims a task, before its runner starts; wait for
    // the runner itself (a cancel before that skips the runner altogether).
    await expect.poll(() => stats.started, { timeout: 15_000 }).toEqual([first.id]);
    expect((await api.getTask(first.id)).status).toBe('running');

    const cancelled = await api.cancelTask(first.id);
    expect(cancelled.status).toBe('cancelled');
    await expect.poll(() => stats.aborted, { timeout: 15_000 }).toEqual([first.id]);
    await expect.poll(async () => (await api.getTask(second.id)).status, { timeout: 15_000 }).toBe('running');
    const log = [];
    for await (const entry of api.logEntries(first.id)) log.push(entry.text);
    expect(log).toContain('cancelled through the API');
  });
});

describe('restarts', () => {
  it('marks a task of a dead runner error and runs the tasks still queued', async () => {
    const state = openState();
    const specPath = join(home, 'web.yaml');
    await import('node:fs/promises').then((fs) => fs.writeFile(specPath, SPEC));
    await state.environments.upsert({ name: 'web', specPath, specYaml: SPEC });
    const orphan = await state.tasks.create({ envName: 'web', request: { envName: 'web', commands: ['x'] } });
    // This process, but another start time: a runner that died and whose pid was reused.
    await state.tasks.start(orphan.id, { pid: process.pid, startTime: 'long-gone' });
    const queued = [
      await state.tasks.create({ envName: 'web', request: { envName: 'web', commands: ['a'] } }),
      await state.tasks.create({ envName: 'web', request: { envName: 'web', commands: ['b'] } }),
    ];
    state.close();

    const { runner, stats } = fakeRunner(() => service!.state, 10);
    const s = await start(runner);
    expect(s.recovered.map((t) => t.id)).toEqual([orphan.id]);
    const api = client(s);
    const recovered = await api.getTask(orphan.id);
    expect(recovered.status).toBe('error');
    expect(recovered.error).toMatch(/prewarm stopped while the task was running/);
    for (const task of queued) expect((await api.waitForTask(task.id, { timeoutMs: 10_000, pollMs: 20 })).status).toBe('succeeded');
    expect(stats.ran).not.toContain(orphan.id);
  });

  it('after a shutdown: running tasks past the grace are cancelled, queued ones run on the next start', async () => {
    const first = fakeRunner(() => service!.state, 60_000);
    let s = await start(first.runner, 1);
    let api = client(s);
    await api.createEnvironment({ spec: SPEC });
    const tasks = await Promise.all([0, 1, 2].map((i) => api.createTask({ envName: 'web', commands: [`job ${i}`] })));
    await expect.poll(() => first.stats.running, { timeout: 15_000 }).toBe(1);

    expect((await api.health()).status).toBe('ok');
    await s.shutdown(100);
    service = undefined;
    expect(first.stats.aborted).toHaveLength(1);
    expect(first.stats.running).toBe(0);

    const second = fakeRunner(() => service!.state, 10);
    s = await start(second.runner, 1);
    api = client(s);
    const after = await Promise.all(tasks.map((t) => api.waitForTask(t.id, { timeoutMs: 10_000, pollMs: 20 })));
    const cancelled = after.filter((t) => t.status === 'cancelled');
    expect(cancelled.map((t) => t.id)).toEqual(first.stats.aborted);
    expect(cancelled[0].result).toMatchObject({ message: expect.stringContaining('grace period') });
    expect(after.filter((t) => t.status === 'succeeded')).toHaveLength(2);
    expect(second.stats.ran).toHaveLength(2);
  });

  it('hurry() during a shutdown cancels the running task at once instead of after the grace', async () => {
    const held = fakeRunner(() => service!.state, 60_000);
    const s = await start(held.runner, 1);
    const api = client(s);
    await api.createEnvironment({ spec: SPEC });
    const task = await api.createTask({ envName: 'web', commands: ['job'] });
    await expect.poll(() => held.stats.running, { timeout: 15_000 }).toBe(1);

    const startedMs = Date.now();
    const stopping = s.shutdown(60_000);
    s.hurry();
    await stopping;
    service = undefined;
    expect(Date.now() - startedMs).toBeLessThan(10_000);
    expect(held.stats.aborted).toEqual([task.id]);
    const state = openState();
    try {
      expect((await state.tasks.get(task.id))?.status).toBe('cancelled');
      expect((await state.tasks.get(task.id))?.result).toMatchObject({ message: expect.stringContaining('stop at once') });
    } finally {
      state.close();
    }
  });

  it('refuses new requests while draining', async () => {
    const { runner } = fakeRunner(() => service!.state, 300);
    const s = await start(runner, 1);
    const api = client(s);
    await api.createEnvironment({ spec: SPEC });
    const task = await api.createTask({ envName: 'web', commands: ['x'] });
    await expect.poll(async () => (await api.getTask(task.id)).status, { timeout: 15_000 }).toBe('running');
    const stopping = s.shutdown(5_000);
    // Refused: a 503 on a connection that was open, else the connection itself is refused.
    const refused = await api.createTask({ envName: 'web', commands: ['y'] }).catch((e: unknown) => e);
    expect(refused).toSatisfy((e: { status?: number; code?: string }) =>
      e.status === 503 || e.code === 'UNREACHABLE');
    await stopping;
    service = undefined;
    const state = openState();
    try {
      expect((await state.tasks.get(task.id))?.status).toBe('succeeded');
      expect(await state.tasks.list({ status: 'queued' })).toEqual([]);
    } finally {
      state.close();
    }
  });
});
