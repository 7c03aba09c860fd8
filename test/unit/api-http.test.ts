import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

// The service keeps its token, specs and state under PREWARM_HOME: a fresh one for this file,
// set before anything of prewarm is imported.
const home = mkdtempSync(join(tmpdir(), 'prewarm-api-http-'));
const previousHome = process.env.PREWARM_HOME;
process.env.PREWARM_HOME = home;

const { openState } = await import('../../src/state/db.js');
const { buildApp } = await import('../../src/api/app.js');
const { TaskQueue } = await import('../../src/api/queue.js');
const { loadOrCreateToken, tokenMatches } = await import('../../src/api/auth.js');
type Api = import('../../src/api/app.js').Api;
type State = import('../../src/state/db.js').State;
type EnvOps = import('../../src/api/env-ops.js').EnvOps;

const SPEC = `# a test environment
name: web
repository:
  path: /srv/repos/web
setup: npm ci
tier: small
`;

/** Prepare and status without VMs. */
const fakeEnvOps: EnvOps = {
  async prepare(spec, opts) {
    opts.onOutput(Buffer.from(`installing ${spec.name}\n`));
    return { snapshotId: `snap-${spec.name}`, cacheHit: false, cacheKey: 'k1', commit: 'c1', agentsMd: null, timingsMs: { setup: 5 } };
  },
  async status(spec) {
    return { envName: spec.name, state: 'missing', reasons: ['no snapshot yet'], snapshotId: null,
      newestSnapshotId: null, cacheKey: 'k1', commit: 'c1' };
  },
};

let state: State;
let api: Api;
let token: string;
let queue: InstanceType<typeof TaskQueue>;

function call(method: 'GET' | 'POST' | 'PUT', url: string, body?: unknown, auth: string | null = token) {
  return api.app.inject({
    method, url, payload: body as object | undefined,
    headers: auth === null ? {} : { authorization: `Bearer ${auth}` },
  });
}

beforeAll(async () => {
  state = openState();
  token = (await loadOrCreateToken()).token;
  // The queue is never started here: submitted tasks stay queued (the queue tests run them).
  queue = new TaskQueue({ state, runner: { run: async () => {} } });
  api = buildApp({ state, token, queue, envOps: fakeEnvOps, logPollMs: 20 });
  await api.app.ready();
});

afterAll(async () => {
  await api.app.close();
  state.close();
  process.env.PREWARM_HOME = previousHome;
  rmSync(home, { recursive: true, force: true });
});

describe('token', () => {
  it('is created once, private, and compared exactly', async () => {
    const path = join(home, 'api-token');
    expect(statSync(path).mode & 0o777).toBe(0o600);
    expect(token.length).toBeGreaterThanOrEqual(40);
    expect((await loadOrCreateToken()).token).toBe(token);
    expect((await readFile(path, 'utf8')).trim()).toBe(token);
    expect(tokenMatches(token, token)).toBe(true);
    expect(tokenMatches(`${token}x`, token)).toBe(false);
    expect(tokenMatches('', token)).toBe(false);
  });

  it('is required everywhere but /health', async () => {
    for (const [method, url] of [
      ['GET', '/v1/environments'], ['POST', '/v1/tasks'], ['GET', '/v1/tasks/task-000000000000'],
      ['GET', '/metrics'], ['GET', '/openapi.json'], ['PUT', '/v1/pools/web'], ['GET', '/no/such/route'],
    ] as const) {
      const missing = await call(method, url, undefined, null);
      expect(missing.statusCode, `${method} ${url} without a token`).toBe(401);
      expect(missing.headers['www-authenticate']).toBe('Bearer');
      expect(missing.json().error.code).toBe('UNAUTHORIZED');
      const wrong = await call(method, url, undefined, `${token.slice(0, -1)}${token.endsWith('A') ? 'B' : 'A'}`);
      expect(wrong.statusCode, `${method} ${url} with a wrong token`).toBe(401);
    }
    const basic = await api.app.inject({ method: 'GET', url: '/v1/environments', headers: { authorization: `Basic ${token}` } });
    expect(basic.statusCode).toBe(401);

    const health = await call('GET', '/health', undefined, null);
    expect(health.statusCode).toBe(200);
    expect(health.json()).toMatchObject({ status: 'ok', version: expect.any(String) });
  });
});

describe('environments', () => {
  it('registers a spec given as YAML, stores the file, and lists it', async () => {
    const res = await call('POST', '/v1/environments', { spec: SPEC });
    expect(res.statusCode).toBe(201);
    const env = res.json();
    expect(env).toMatchObject({ name: 'web', specPath: join(home, 'specs', 'web.yaml'), currentSnapshotId: null });
    expect(await readFile(env.specPath, 'utf8')).toContain('# a test environment');

    const again = await call('POST', '/v1/environments', { spec: SPEC });
    expect(again.statusCode).toBe(200);
    expect((await call('GET', '/v1/environments')).json().environments.map((e: { name: string }) => e.name)).toEqual(['web']);
    expect((await call('GET', '/v1/environments/web')).json().name).toBe('web');
  });

  it('takes a JSON object spec, and a name that wins over the spec\'s', async () => {
    const res = await call('POST', '/v1/environments', {
      name: 'api', spec: { name: 'ignored', repository: { url: 'https://example.com/a.git' }, setup: 'true', tier: 'small' },
    });
    expect(res.statusCode).toBe(201);
    expect(res.json().name).toBe('api');
    expect(res.json().spec).toContain('name: api');
  });

  it('answers 400 naming every bad field of a spec', async () => {
    const res = await call('POST', '/v1/environments', {
      spec: { name: 'Bad Name', repository: { path: '/x', url: 'https://x' }, tier: 'huge', colour: 'red' },
    });
    expect(res.statusCode).toBe(400);
    const fields = res.json().error.fields.map((f: { field: string }) => f.field);
    expect(fields).toEqual(expect.arrayContaining(['spec.name', 'spec.setup', 'spec.tier', 'spec.colour', 'spec.repository']));

    const relative = await call('POST', '/v1/environments', { spec: SPEC.replace('/srv/repos/web', './web') });
    expect(relative.statusCode).toBe(400);
    expect(relative.json().error.fields).toEqual([expect.objectContaining({ field: 'spec.repository.path' })]);

    const yaml = await call('POST', '/v1/environments', { spec: 'name: [unclosed' });
    expect(yaml.statusCode).toBe(400);
    expect(yaml.json().error.fields[0].field).toBe('spec');
  });

  it('answers 400 for a bad body and bad parameters', async () => {
    const empty = await call('POST', '/v1/environments', {});
    expect(empty.statusCode).toBe(400);
    expect(empty.json().error.fields).toEqual([expect.objectContaining({ in: 'body', field: 'spec' })]);

    const badName = await call('GET', '/v1/environments/Not_A_Slug');
    expect(badName.statusCode).toBe(400);
    expect(badName.json().error.fields[0]).toMatchObject({ in: 'params', field: 'name' });

    const notJson = await api.app.inject({ method: 'POST', url: '/v1/environments', payload: '{oops',
      headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' } });
    expect(notJson.statusCode).toBe(400);
    expect(notJson.json().error.message).toMatch(/JSON/i);
  });

  it('answers 404 naming an unknown environment', async () => {
    for (const url of ['/v1/environments/nope', '/v1/environments/nope/status', '/v1/pools/nope']) {
      const res = await call('GET', url);
      expect(res.statusCode, url).toBe(404);
      expect(res.json().error.message).toContain('nope');
    }
    const prepare = await call('POST', '/v1/environments/nope/prepare');
    expect(prepare.statusCode).toBe(404);
    const job = await call('GET', '/v1/jobs/prep-123');
    expect(job.statusCode).toBe(404);
    expect(job.json().error.message).toContain('prep-123');
  });

  it('prepares in the background and records the snapshot', async () => {
    const res = await call('POST', '/v1/environments/web/prepare');
    expect(res.statusCode).toBe(202);
    const job = res.json();
    expect(job).toMatchObject({ kind: 'prepare', envName: 'web', force: false });
    await expect.poll(async () => (await call('GET', `/v1/jobs/${job.id}`)).json().status).toBe('succeeded');
    const done = (await call('GET', `/v1/jobs/${job.id}`)).json();
    expect(done).toMatchObject({ result: { snapshotId: 'snap-web', cacheHit: false }, outputTail: 'installing web\n' });
    expect((await call('GET', '/v1/environments/web')).json().currentSnapshotId).toBe('snap-web');
    expect((await call('GET', '/v1/environments/web/status')).json()).toMatchObject({ envName: 'web', state: 'missing' });
  });
});

describe('pools', () => {
  it('stores a target per environment', async () => {
    expect((await call('GET', '/v1/pools/web')).json()).toEqual({ envName: 'web', targetSize: 0, updatedAt: null });
    const set = await call('PUT', '/v1/pools/web', { targetSize: 3 });
    expect(set.statusCode).toBe(200);
    expect(set.json()).toMatchObject({ envName: 'web', targetSize: 3 });
    expect((await call('GET', '/v1/pools/web')).json().targetSize).toBe(3);

    const bad = await call('PUT', '/v1/pools/web', { targetSize: -1, extra: true });
    expect(bad.statusCode).toBe(400);
    expect(bad.json().error.fields.map((f: { field: string }) => f.field).sort()).toEqual(['extra', 'targetSize']);
    expect((await call('PUT', '/v1/pools/nope', { targetSize: 1 })).statusCode).toBe(404);
    expect((await call('PUT', '/v1/pools/web', { targetSize: 1001 })).statusCode).toBe(400);
  });
});

describe('tasks', () => {
  it('queues a task at once and shows it', async () => {
    const res = await call('POST', '/v1/tasks', { envName: 'web', commands: ['npm test'], commit: 'main' });
    expect(res.statusCode).toBe(202);
    const task = res.json();
    expect(task).toMatchObject({ envName: 'web', status: 'queued', request: { commands: ['npm test'], commit: 'main' } });
    expect((await call('GET', `/v1/tasks/${task.id}`)).json().id).toBe(task.id);
    expect((await call('GET', '/v1/tasks?env=web&status=queued')).json().tasks.map((t: { id: string }) => t.id)).toContain(task.id);
  });

  it('answers 400 with the field names of a bad task', async () => {
    const res = await call('POST', '/v1/tasks', { envName: 'web', commands: [], timeoutSeconds: 'soon', shell: 'zsh' });
    expect(res.statusCode).toBe(400);
    const fields = res.json().error.fields.map((f: { field: string }) => f.field).sort();
    expect(fields).toEqual(['commands', 'shell', 'timeoutSeconds']);
    expect(res.json().error.message).toContain('commands');

    const nul = await call('POST', '/v1/tasks', { envName: 'web', commands: ['true', 'echo \u0000 nul'] });
    expect(nul.statusCode).toBe(400);
    expect(nul.json().error.fields).toEqual([expect.objectContaining({ field: 'commands.1', message: expect.stringContaining('NUL') })]);

    const noEnv = await call('POST', '/v1/tasks', { commands: ['x'] });
    expect(noEnv.json().error.fields.map((f: { field: string }) => f.field)).toEqual(['envName']);
    const badQuery = await call('GET', '/v1/tasks?limit=0');
    expect(badQuery.json().error.fields[0]).toMatchObject({ in: 'query', field: 'limit' });
  });

  it('checks a very long id like any other: 401 without the token, then 400 naming the id', async () => {
    const id = `task-${'f'.repeat(300)}`;
    expect((await call('GET', `/v1/tasks/${id}`, undefined, null)).statusCode).toBe(401);
    const res = await call('GET', `/v1/tasks/${id}`);
    expect(res.statusCode).toBe(400);
    expect(res.json().error.fields).toEqual([expect.objectContaining({ in: 'params', field: 'id' })]);
  });

  it('answers 404 naming an unknown task or environment', async () => {
    const id = 'task-ffffffffffff';
    for (const [method, url] of [
      ['GET', `/v1/tasks/${id}`], ['GET', `/v1/tasks/${id}/log`], ['GET', `/v1/tasks/${id}/diff`], ['POST', `/v1/tasks/${id}/cancel`],
    ] as const) {
      const res = await call(method, url);
      expect(res.statusCode, url).toBe(404);
      expect(res.json().error).toMatchObject({ code: 'NOT_FOUND', message: expect.stringContaining(id) });
    }
    const env = await call('POST', '/v1/tasks', { envName: 'ghost', commands: ['true'] });
    expect(env.statusCode).toBe(404);
    expect(env.json().error.message).toContain('ghost');
  });

  it('cancels a queued task at once, and refuses to cancel it twice', async () => {
    const task = (await call('POST', '/v1/tasks', { envName: 'web', commands: ['sleep 100'] })).json();
    const res = await call('POST', `/v1/tasks/${task.id}/cancel`);
    expect(res.statusCode).toBe(200);
    expect(res.json().status).toBe('cancelled');
    const again = await call('POST', `/v1/tasks/${task.id}/cancel`);
    expect(again.statusCode).toBe(409);
    expect(again.json().error.message).toContain('cancelled');
  });

  it('serves the diff byte-exact, and 404 before there is one', async () => {
    const task = await state.tasks.create({ envName: 'web', request: { commands: ['true'] } });
    expect((await call('GET', `/v1/tasks/${task.id}/diff`)).statusCode).toBe(404);
    const patch = Buffer.concat([Buffer.from('diff --git a/x b/x\n+caf\u00e9 '), Buffer.from([0xff, 0x0a])]);
    await state.taskLogs.putDiff(task.id, { patch, stats: { filesChanged: 1 }, tooLarge: false });
    const res = await call('GET', `/v1/tasks/${task.id}/diff`);
    expect(res.statusCode).toBe(200);
    expect(res.headers['content-type']).toMatch(/^text\/x-diff/);
    expect(res.rawPayload.equals(patch)).toBe(true);
  });

  it('streams the log as server-sent events until the task ends', async () => {
    const task = await state.tasks.create({ envName: 'web', request: { commands: ['true'] } });
    await state.tasks.start(task.id, { pid: 1, startTime: 'x' });
    await state.taskLogs.append(task.id, 'event', 'restored vm-1');
    await state.taskLogs.append(task.id, 'output', 'line one\n');
    setTimeout(() => {
      void (async () => {
        await state.taskLogs.append(task.id, 'output', Buffer.from([0xff, 0xfe]));
        await state.tasks.markFinished(task.id, 'succeeded', {});
      })();
    }, 100);

    const res = await call('GET', `/v1/tasks/${task.id}/log`);
    expect(res.statusCode).toBe(200);
    expect(res.headers['content-type']).toMatch(/^text\/event-stream/);
    const events = res.body.trim().split('\n\n');
    expect(events[0]).toMatch(/^id: 1\nevent: event\ndata: \{"seq":1,"stream":"event",.*"text":"restored vm-1"\}$/);
    expect(events[1]).toContain('"text":"line one\\n"');
    expect(events[2]).toContain(`"base64":"${Buffer.from([0xff, 0xfe]).toString('base64')}"`);
    expect(events[3]).toBe('event: end\ndata: {"status":"succeeded"}');

    const resumed = await api.app.inject({ method: 'GET', url: `/v1/tasks/${task.id}/log`,
      headers: { authorization: `Bearer ${token}`, 'last-event-id': '2' } });
    expect(resumed.body.trim().split('\n\n').map((e) => e.split('\n')[0])).toEqual(['id: 3', 'event: end']);
  });
});

describe('metrics', () => {
  it('exposes restore latency, durations by status, pools and host memory', async () => {
    const task = await state.tasks.create({ envName: 'web', request: { commands: ['true'] } });
    await state.tasks.start(task.id, { pid: 1, startTime: 'x' });
    await state.tasks.markFinished(task.id, 'succeeded', { timingsMs: { restore: 300 } });
    api.metrics.observe((await state.tasks.get(task.id))!);

    const res = await call('GET', '/metrics');
    expect(res.statusCode).toBe(200);
    expect(res.headers['content-type']).toMatch(/^text\/plain; version=0\.0\.4/);
    const text = res.body;
    expect(text).toContain('# TYPE prewarm_restore_seconds histogram');
    expect(text).toContain('prewarm_restore_seconds_bucket{le="0.25"} 0');
    expect(text).toContain('prewarm_restore_seconds_bucket{le="0.5"} 1');
    expect(text).toContain('prewarm_restore_seconds_bucket{le="+Inf"} 1');
    expect(text).toContain('prewarm_restore_seconds_sum 0.3');
    expect(text).toMatch(/prewarm_task_duration_seconds_count\{status="succeeded"\} 1/);
    expect(text).toContain('prewarm_pool_target_size{env="web"} 3');
    expect(text).toMatch(/prewarm_tasks\{status="queued"\} \d+/);
    expect(text).toMatch(/prewarm_host_memory_available_bytes \d+/);
    for (const line of text.trim().split('\n')) {
      expect(line).toMatch(/^(# (HELP|TYPE) \w+ .+|\w+(\{[^}]*\})? -?[\d.e+]+)$/);
    }
  });
});
