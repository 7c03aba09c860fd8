import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import type { Command } from 'commander';
import { tokenPath } from '../api/auth.js';
import { PrewarmApiError, PrewarmClient, type TaskView } from '../sdk/client.js';
import type { TaskResult } from '../task/types.js';
import { InputError, NotFoundError } from '../util/errors.js';
import { mib, report, table } from './output.js';
import { renderResult, taskExitCode } from './render.js';

/**
 * The CLI's remote mode: with `--remote URL` (or PREWARM_REMOTE) the task and env commands
 * talk to a `prewarm serve` through the SDK instead of running VMs in this process. The token
 * comes from PREWARM_TOKEN, else the file given by --token-file / PREWARM_TOKEN_FILE, else
 * the local service's token file (PREWARM_HOME/api-token).
 */
export interface Remote {
  url: string;
  client: PrewarmClient;
}

export async function remoteOf(program: Command): Promise<Remote | null> {
  const opts = program.opts<{ remote?: string; tokenFile?: string }>();
  if (!opts.remote) return null;
  let url: URL;
  try {
    url = new URL(opts.remote);
  } catch {
    throw new InputError(`--remote must be the service's URL, like http://127.0.0.1:7070; got "${opts.remote}"`);
  }
  if (url.search || url.hash || !/^https?:$/.test(url.protocol)) {
    throw new InputError(`--remote must be an http(s) URL without a query or fragment, like ` +
      `http://127.0.0.1:7070; got "${opts.remote}"`);
  }
  let token = process.env.PREWARM_TOKEN?.trim();
  if (!token) {
    const file = opts.tokenFile ?? tokenPath();
    token = (await readFile(file, 'utf8').catch((err: NodeJS.ErrnoException) => {
      throw new InputError(`no API token for ${url.origin}: cannot read ${file} (${err.code ?? err.message}); ` +
        'set PREWARM_TOKEN, or --token-file with the file `prewarm serve` printed at start');
    })).trim();
  }
  return { url: url.origin, client: new PrewarmClient({ baseUrl: url.toString(), token }) };
}

/** An environment as the service knows it: a spec file here is registered (sent) first. */
async function remoteEnvName(remote: Remote, nameOrPath: string): Promise<string> {
  if (existsSync(nameOrPath) || /\.ya?ml$/.test(nameOrPath)) {
    const spec = await readFile(nameOrPath, 'utf8').catch((err: NodeJS.ErrnoException) => {
      throw new NotFoundError(`spec ${nameOrPath}: cannot read it (${err.code ?? err.message})`);
    });
    return (await remote.client.createEnvironment({ spec })).name;
  }
  return nameOrPath;
}

export interface RemoteRunOptions {
  json: boolean;
  diffOnly?: boolean;
  commands: string[];
  commit?: string;
  timeoutSeconds?: number;
  allowStale?: boolean;
  noRebuild?: boolean;
}

/**
 * `task run` through the service: submit, follow the log (output to stdout, events to
 * stderr), then print the result and the patch as `task run` does locally. Ctrl-C cancels
 * the task on the service; a second Ctrl-C stops following it (it stays cancelled).
 */
export async function remoteTaskRun(remote: Remote, nameOrPath: string, opts: RemoteRunOptions): Promise<void> {
  const envName = await remoteEnvName(remote, nameOrPath);
  const live = !opts.json && !opts.diffOnly;
  const created = await remote.client.createTask({
    envName, commands: opts.commands, commit: opts.commit, allowStale: opts.allowStale, noRebuild: opts.noRebuild,
    timeoutSeconds: opts.timeoutSeconds === undefined ? undefined : Math.ceil(opts.timeoutSeconds),
  });
  if (live) {
    process.stderr.write(`prewarm: task ${created.id} submitted to ${remote.url}` +
      (created.status === 'queued' ? ' (queued: its output follows once the service runs it)' : '') + '\n');
  }

  let cancelling = false;
  const onSignal = (sig: NodeJS.Signals) => {
    if (cancelling) process.exit(130);
    cancelling = true;
    process.stderr.write(`prewarm: ${sig}: cancelling task ${created.id} on ${remote.url} (again to stop following it)\n`);
    remote.client.cancelTask(created.id).catch((err: Error) => {
      process.stderr.write(`prewarm: cancelling task ${created.id} failed: ${err.message}\n`);
    });
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  let endStatus: string | undefined;
  try {
    await followRemoteTask(remote, created.id, live, opts, (status) => { endStatus = status; });
  } catch (err) {
    // The service went away (a restart, a shutdown): the task itself may be fine there.
    if (!(err instanceof PrewarmApiError) || (err.status !== 0 && err.status !== 503)) throw err;
    const show = `prewarm --remote ${remote.url} task show ${created.id}`;
    process.stderr.write(endStatus
      ? `prewarm: task ${created.id} ended ${endStatus}, but the service went away before its result and ` +
        `diff could be fetched (${err.message}); once it answers: ${show} [--diff]\n`
      : `prewarm: lost the service while following task ${created.id}: ${err.message}\n` +
        `prewarm: the task is recorded there; once it answers: ${show}\n`);
    process.exitCode = taskExitCode(endStatus);
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}

/** Print the task's log as it comes, then its result and patch; sets the exit code. */
async function followRemoteTask(
  remote: Remote, taskId: string, live: boolean, opts: RemoteRunOptions, onEnd: (status: string) => void,
): Promise<void> {
  for await (const entry of remote.client.logEntries(taskId, { onEnd })) {
    if (!live) continue;
    const data = entry.text ?? Buffer.from(entry.base64 ?? '', 'base64');
    if (entry.stream === 'output') process.stdout.write(data);
    else process.stderr.write(`prewarm: ${String(data).trimEnd()}\n`);
  }
  const task = await remote.client.waitForTask(taskId, { timeoutMs: 60_000 });
  const patch = await remote.client.getDiffBytes(task.id).catch(() => Buffer.alloc(0));
  if (opts.diffOnly) process.stdout.write(patch);
  else if (opts.json) report(true, task, () => '');
  else {
    process.stdout.write(`\n${renderRemoteTask(task)}\n`);
    if (patch.length > 0) process.stdout.write(Buffer.concat([Buffer.from('\n'), patch]));
  }
  process.exitCode = taskExitCode(task.status);
}

/** A task as the service reports it: the result block when it has one, else its status. */
export function renderRemoteTask(task: TaskView): string {
  const result = task.result as unknown as TaskResult | null;
  if (result && result.taskId) return renderResult(result);
  return `task ${task.id} on ${task.envName}: ${task.status}${task.error ? ` — ${task.error}` : ''}` +
    (result && typeof result.message === 'string' ? ` — ${result.message}` : '');
}

export async function remoteTaskLs(remote: Remote, json: boolean, filter: { env?: string; limit: number }): Promise<void> {
  const tasks = await remote.client.listTasks(filter);
  report(json, tasks, () => table(tasks.map((t) => ({ id: t.id, env: t.envName, status: t.status,
    peak: mib(t.peakMemoryBytes), created: t.createdAt })), ['id', 'env', 'status', 'peak', 'created']));
}

export async function remoteTaskShow(remote: Remote, json: boolean, id: string, opts: { log?: boolean; diff?: boolean }): Promise<void> {
  if (opts.diff) {
    process.stdout.write(await remote.client.getDiffBytes(id));
  } else if (opts.log) {
    for await (const chunk of remote.client.streamLog(id)) process.stdout.write(chunk);
  } else {
    const task = await remote.client.getTask(id);
    report(json, task, () => renderRemoteTask(task));
  }
}

export async function remoteTaskCancel(remote: Remote, json: boolean, id: string): Promise<void> {
  const task = await remote.client.cancelTask(id);
  report(json, task, () => `task ${task.id}: ${task.status}`);
}

export async function remoteEnvPrepare(remote: Remote, json: boolean, nameOrPath: string, force: boolean): Promise<void> {
  const envName = await remoteEnvName(remote, nameOrPath);
  if (!json) process.stderr.write(`prewarm: preparing ${envName} on ${remote.url}\n`);
  const job = await remote.client.prepare(envName, { force, timeoutMs: 2 * 60 * 60_000, pollMs: 2000 });
  report(json, job, () => job.status === 'succeeded' && job.result
    ? `${envName}: ${job.result.cacheHit ? 'cache hit,' : 'prepared'} snapshot ${job.result.snapshotId} ` +
      `(commit ${job.result.commit.slice(0, 12)})`
    : `${envName}: prepare ${job.status}${job.error ? ` — ${job.error}` : ''}`);
  if (job.status !== 'succeeded') process.exitCode = 1;
}

export async function remoteEnvStatus(remote: Remote, json: boolean, name: string): Promise<void> {
  const status = await remote.client.environmentStatus(await remoteEnvName(remote, name));
  report(json, status, () => [`${status.envName}: ${status.state}` +
    (status.snapshotId ? ` (snapshot ${status.snapshotId})` : ''), ...status.reasons.map((r) => `  - ${r}`)].join('\n'));
  if (status.state !== 'fresh') process.exitCode = 3;
}

export async function remoteEnvLs(remote: Remote, json: boolean): Promise<void> {
  const envs = await remote.client.listEnvironments();
  report(json, envs, () => table(envs.map((e) => ({ ...e, snapshot: e.currentSnapshotId ?? '-' })),
    ['name', 'snapshot', 'updatedAt']));
}
