import { once } from 'node:events';
import type { Command } from 'commander';
import { readFile } from 'node:fs/promises';
import { specFor } from '../../env/lookup.js';
import { openState, type StateStore } from '../../state/db.js';
import { LOG_READ_BATCH } from '../../state/task-logs.js';
import { submitAndRun } from '../../task/record.js';
import { budgetedVmSource } from '../../pool/source.js';
import type { TaskResult } from '../../task/types.js';
import { CancelledError, InputError, NotFoundError, PrewarmError } from '../../util/errors.js';
import { shellQuote } from '../../guest/guest.js';
import { mib, report, table } from '../output.js';
import { renderResult, taskExitCode } from '../render.js';
import { remoteOf, remoteTaskCancel, remoteTaskLs, remoteTaskRun, remoteTaskShow } from '../remote.js';
import { globals } from '../globals.js';
import { readService } from '../service-file.js';

async function readScript(file: string): Promise<string[]> {
  const text = await readFile(file, 'utf8').catch((err: NodeJS.ErrnoException) => {
    throw new InputError(`--script ${file}: cannot read it (${err.code ?? err.message}); give a file ` +
      'with one shell command per line');
  });
  return text.split('\n').map((l) => l.trim()).filter((l) => l && !l.startsWith('#'));
}

export function registerTask(program: Command): void {
  const task = program.command('task').description('tasks: run commands in a VM restored from a snapshot');

  task.command('run')
    .description('restore a VM of ENV, run commands under its memory limit, print the result and diff')
    .argument('<env>', 'environment name or spec file')
    .argument('[cmd...]', 'a command to run (after --)')
    .option('--commit <sha>', 'check out this commit first')
    .option('--script <file>', 'run each non-empty line of FILE as a command')
    .option('--timeout <seconds>', 'wall-clock limit for the whole task')
    .option('--no-rebuild', 'refuse instead of rebuilding a stale snapshot')
    .option('--allow-stale', 'run on a stale snapshot instead of rebuilding')
    .option('--diff-only', 'print only the patch on stdout')
    .action(async (envArg: string, cmd: string[], opts: {
      commit?: string; script?: string; timeout?: string; rebuild: boolean; allowStale?: boolean; diffOnly?: boolean;
    }) => {
      const g = globals(program);
      // One argument is a shell command as written; several are an argv, quoted for the shell.
      const commands = opts.script
        ? await readScript(opts.script)
        : cmd.length === 1 ? [cmd[0]] : cmd.length > 1 ? [cmd.map(shellQuote).join(' ')] : [];
      if (commands.length === 0) {
        throw new InputError(opts.script ? `--script ${opts.script} has no commands (only blank lines or comments)`
          : 'give a command after --, or --script FILE');
      }
      const timeoutSeconds = opts.timeout === undefined ? undefined : Number(opts.timeout);
      if (timeoutSeconds !== undefined && !(/^\d+(\.\d+)?$/.test(opts.timeout!) && timeoutSeconds > 0 && timeoutSeconds <= 7 * 86_400)) {
        throw new InputError(`--timeout must be a positive number of seconds, got "${opts.timeout}" (at most a week)`);
      }
      const remote = await remoteOf(program);
      if (remote) {
        if (timeoutSeconds !== undefined && !Number.isInteger(timeoutSeconds)) {
          throw new InputError(`--timeout must be whole seconds with --remote (the API takes whole seconds), got "${opts.timeout}"`);
        }
        return remoteTaskRun(remote, envArg, { json: g.json, diffOnly: opts.diffOnly, commands, commit: opts.commit,
          timeoutSeconds, allowStale: opts.allowStale, noRebuild: !opts.rebuild });
      }
      const { spec } = await specFor(envArg);
      const state = openState();
      if (!g.json && !opts.diffOnly) await hintServicePool(state, spec.name);
      // Ctrl-C or SIGTERM cancels the task (its VM is destroyed, it is recorded cancelled);
      // a second one quits at once (the VM still dies with this process).
      const cancel = new AbortController();
      const onSignal = (sig: NodeJS.Signals) => {
        if (cancel.signal.aborted) process.exit(130);
        process.stderr.write(`prewarm: ${sig}: cancelling the task (again to quit at once)\n`);
        cancel.abort(new CancelledError(`cancelled by ${sig} to prewarm task run`));
      };
      process.on('SIGINT', onSignal);
      process.on('SIGTERM', onSignal);
      try {
        const live = !g.json && !opts.diffOnly;
        const result = await submitAndRun(state, spec, {
          envName: spec.name, commit: opts.commit, commands, timeoutSeconds,
          noRebuild: !opts.rebuild, allowStale: opts.allowStale,
        }, {
          onOutput: live ? (chunk) => process.stdout.write(chunk) : undefined,
          onEvent: live ? (m) => process.stderr.write(`prewarm: ${m}\n`) : undefined,
          vmSource: budgetedVmSource(),
          signal: cancel.signal,
        });
        if (!result) return;
        if (opts.diffOnly) {
          process.stdout.write(result.diff?.patchBytes ?? '');
          if (result.diff?.stats.tooLarge) {
            process.stderr.write(`prewarm: the diff of task ${result.taskId} is too large ` +
              `(${result.diff.stats.sizeBytes} bytes) and was not kept\n`);
          }
        }
        else if (g.json) report(true, { ...result, diff: result.diff && { ...result.diff, patchBytes: undefined } }, () => '');
        else {
          // The patch goes out as its exact bytes: files need not be UTF-8.
          process.stdout.write(`\n${renderResult(result)}\n`);
          if (result.diff?.patchBytes?.length) process.stdout.write(Buffer.concat([Buffer.from('\n'), result.diff.patchBytes]));
        }
        process.exitCode = taskExitCode(result.status);
      } finally {
        process.off('SIGINT', onSignal);
        process.off('SIGTERM', onSignal);
        state.close();
      }
    });

  task.command('ls')
    .description('recent tasks')
    .option('--env <name>', 'only this environment')
    .option('--limit <n>', 'how many', '20')
    .action(async (opts: { env?: string; limit: string }) => {
      const g = globals(program);
      const remote = await remoteOf(program);
      if (remote) return remoteTaskLs(remote, g.json, { env: opts.env, limit: Number(opts.limit) || 20 });
      const state = openState();
      try {
        const tasks = await state.tasks.list({ envName: opts.env, limit: Number(opts.limit) || 20 });
        report(g.json, tasks, () => table(tasks.map((t) => ({ id: t.id, env: t.envName, status: t.status,
          peak: mib(t.peakMemoryBytes), created: t.createdAt.toISOString() })), ['id', 'env', 'status', 'peak', 'created']));
      } finally {
        state.close();
      }
    });

  task.command('show')
    .description('a task\'s result, output or diff')
    .argument('<id>', 'task id')
    .option('--log', 'print its output')
    .option('--diff', 'print its patch')
    .action(async (id: string, opts: { log?: boolean; diff?: boolean }) => {
      const g = globals(program);
      const remote = await remoteOf(program);
      if (remote) return remoteTaskShow(remote, g.json, id, opts);
      const state = openState();
      try {
        const t = await state.tasks.get(id);
        if (!t) throw new NotFoundError(`no task ${id}; \`prewarm task ls\` lists tasks`);
        if (opts.diff) {
          const diff = await state.taskLogs.getDiff(id);
          if (!diff) {
            throw new PrewarmError('NO_DIFF', `task ${id} has no diff (status ${t.status}); a diff is stored ` +
              'once the task\'s commands have run');
          }
          if (diff.tooLarge) {
            throw new PrewarmError('DIFF_TOO_LARGE', `the diff of task ${id} is too large ` +
              `(${Number(diff.stats.sizeBytes ?? 0)} bytes) and was not kept; make the task's change smaller`);
          }
          process.stdout.write(diff.patch);
        } else if (opts.log) {
          // A few chunks at a time, waiting for the pipe to take them.
          for (let seq = 0, chunks = await state.taskLogs.read(id, seq, LOG_READ_BATCH); chunks.length > 0;
            chunks = await state.taskLogs.read(id, seq, LOG_READ_BATCH)) {
            for (const c of chunks) {
              seq = c.seq;
              if (c.stream === 'output' && !process.stdout.write(c.data)) await once(process.stdout, 'drain');
            }
          }
        } else {
          report(g.json, t, () => t.result ? renderResult(t.result as unknown as TaskResult)
            : `task ${t.id}: ${t.status}${t.error ? ` — ${t.error}` : ''}`);
        }
      } finally {
        state.close();
      }
    });

  task.command('cancel')
    .description('cancel a queued or running task of a service (with --remote)')
    .argument('<id>', 'task id')
    .action(async (id: string) => {
      const g = globals(program);
      const remote = await remoteOf(program);
      if (!remote) {
        throw new InputError(`cancel task ${id} where it runs: Ctrl-C at its \`prewarm task run\`, or for a task ` +
          'of `prewarm serve`, `prewarm --remote http://HOST:PORT task cancel ID`');
      }
      await remoteTaskCancel(remote, g.json, id);
    });
}

/** Pool VMs serve the process that keeps them: when a service on this PREWARM_HOME keeps a
 * pool for the environment, say that this run restores and how to use the pool instead. */
async function hintServicePool(state: StateStore, envName: string): Promise<void> {
  const service = await readService();
  const pool = service ? await state.pools.get(envName) : undefined;
  if (!service || !pool || pool.targetSize === 0) return;
  const url = service.port === 0 ? 'URL' : `http://${service.host === '0.0.0.0' ? '127.0.0.1' : service.host}:${service.port}`;
  process.stderr.write(`prewarm: the service (process ${service.pid}) keeps warm VMs of ${envName} for its own ` +
    `tasks; this run restores one. Through the service a task takes a warm VM: ` +
    `prewarm --remote ${url} task run ${envName} -- ...\n`);
}
