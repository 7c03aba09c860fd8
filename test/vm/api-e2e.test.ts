import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it, onTestFailed } from 'vitest';
import { startService, type Service } from '../../src/api/service.js';
import { listVms } from '../../src/engine/reaper.js';
import { materializeExample } from '../../src/env/example.js';
import { PrewarmClient } from '../../src/sdk/client.js';
import { paths, prewarmHome } from '../../src/util/paths.js';
import { interruptWhen, prewarmCli } from './cli.js';

/**
 * The service end to end with real VMs: register the bundled example through the API,
 * prepare it, submit a task that changes files and runs `npm test`, follow its log to the
 * end, fetch the diff and apply it to a clone of the example at the task's base commit.
 * The server runs in this process on a free port, with the real task runner.
 */
describe('prewarm serve, end to end (real VMs)', () => {
  let service: Service;
  let api: PrewarmClient;
  let work: string;
  const taskIds: string[] = [];

  beforeAll(async () => {
    await mkdir(paths.tmp(), { recursive: true });
    work = await mkdtemp(join(paths.tmp(), 'test-api-e2e-'));
    service = await startService({ port: 0, concurrency: 2 });
    api = new PrewarmClient({ baseUrl: service.url, token: service.token });
  });

  afterAll(async () => {
    await service?.shutdown(5_000);
    const left = (await listVms()).filter((vm) => vm.owner?.pid === process.pid);
    expect(left.map((vm) => vm.vmId), 'VMs left after shutdown').toEqual([]);
    await rm(work, { recursive: true, force: true });
  });

  it('creates, prepares, runs a task, streams its log and returns a diff that applies', async () => {
    onTestFailed(() => {
      process.stderr.write(`api-e2e: service ${service.url}, tasks ${taskIds.join(', ') || '-'}\n`);
    });

    const specPath = await materializeExample();
    const env = await api.createEnvironment({ spec: await readFile(specPath, 'utf8') });
    expect(env.name).toBe('hello-node');

    const job = await api.prepare('hello-node', { timeoutMs: 20 * 60_000, pollMs: 2000 });
    expect(job.error, job.outputTail.slice(-2000)).toBeNull();
    expect(job.status).toBe('succeeded');
    expect((await api.getEnvironment('hello-node')).currentSnapshotId).toBe(job.result?.snapshotId);
    expect((await api.environmentStatus('hello-node')).state).toBe('fresh');

    const submitted = await api.createTask({
      envName: 'hello-node',
      commands: [
        "printf '\\n// touched through the API\\n' >> src/index.js",
        "printf '# notes\\n' > NOTES.md",
        'npm test',
      ],
    });
    taskIds.push(submitted.id);
    expect(['queued', 'running']).toContain(submitted.status);

    let output = '';
    for await (const chunk of api.streamLog(submitted.id)) output += chunk.toString();
    const task = await api.getTask(submitted.id);
    expect(task.status, `${task.error ?? ''}\n${output.slice(-2000)}`).toBe('succeeded');
    expect(output).toMatch(/# pass 2/);

    const patch = await api.getDiffBytes(submitted.id);
    expect(patch.toString()).toContain('+// touched through the API');
    expect(patch.toString()).toContain('NOTES.md');

    const baseCommit = String(task.result?.baseCommit ?? '');
    expect(baseCommit).toMatch(/^[0-9a-f]{40}$/);
    const clone = join(work, 'clone');
    await execa('git', ['clone', '--quiet', join(prewarmHome(), 'examples', 'hello-node'), clone]);
    await execa('git', ['checkout', '--quiet', baseCommit], { cwd: clone });
    const patchFile = join(work, 'task.patch');
    await writeFile(patchFile, patch);
    await execa('git', ['apply', '--check', patchFile], { cwd: clone });
    await execa('git', ['apply', patchFile], { cwd: clone });
    expect(await readFile(join(clone, 'NOTES.md'), 'utf8')).toBe('# notes\n');

    const metrics = await api.metrics();
    expect(metrics).toMatch(/prewarm_restore_seconds_count [1-9]/);
  });

  it('cancels a running task and destroys its VM', async () => {
    const submitted = await api.createTask({ envName: 'hello-node', commands: ['sleep 600'] });
    taskIds.push(submitted.id);
    let vmId: string | null = null;
    await expect.poll(async () => {
      const task = await api.getTask(submitted.id);
      vmId = task.vmId;
      return task.status === 'running' && vmId !== null;
    }, { timeout: 120_000, interval: 500 }).toBe(true);

    const cancelled = await api.cancelTask(submitted.id);
    expect(cancelled.status).toBe('cancelled');
    await expect.poll(() => service.queue.running, { timeout: 60_000, interval: 200 }).toBe(0);
    expect(existsSync(join(paths.vms(), vmId!))).toBe(false);
    expect((await api.getTask(submitted.id)).status).toBe('cancelled');
  });

  it('the CLI in remote mode runs a task through the service, prints its output and diff, and cancels on Ctrl-C', async () => {
    const remote = (args: string[]) => ['--remote', service.url, ...args];
    const withToken = { env: { PREWARM_TOKEN: service.token } };
    const cli = (args: string[]) => prewarmCli(remote(args), withToken);
    const run = await cli(['task', 'run', 'hello-node', '--', 'echo remote-ok | tee REMOTE.txt']);
    expect(run.exitCode, run.stderr).toBe(0);
    expect(run.stdout).toMatch(/^remote-ok$/m);
    const id = /task (task-[0-9a-f]+) submitted to/.exec(run.stderr)?.[1];
    expect(id, run.stderr).toBeDefined();
    taskIds.push(id!);
    expect(run.stdout).toContain(`task ${id} on hello-node: succeeded`);
    expect(run.stdout).toContain('+++ b/REMOTE.txt');
    const shown = await prewarmCli(remote(['task', 'show', id!, '--diff']), { ...withToken, stripFinalNewline: false });
    expect(shown.stdout).toBe(await api.getDiff(id!));

    const denied = await prewarmCli(remote(['task', 'ls']), { env: { PREWARM_TOKEN: 'wrong-token-wrong-token' } });
    expect(denied.exitCode).toBe(1);
    expect(denied.stderr).toMatch(/^prewarm: .*token/im);

    const { result: cancelled, sent } = await interruptWhen(remote(['task', 'run', 'hello-node', '--', 'sleep 600']),
      'running: sleep 600', withToken);
    expect(sent, cancelled.stderr).toBe(true);
    expect(cancelled.exitCode, cancelled.stderr).toBe(130);
    const cancelledId = /task (task-[0-9a-f]+) submitted to/.exec(cancelled.stderr)![1];
    taskIds.push(cancelledId);
    expect((await api.getTask(cancelledId)).status).toBe('cancelled');
    await expect.poll(() => service.queue.running, { timeout: 60_000, interval: 200 }).toBe(0);
  });
}, 30 * 60_000);
