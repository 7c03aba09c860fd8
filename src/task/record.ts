import type { StateStore } from '../state/db.js';
import type { EnvSpec } from '../env/spec.js';
import { selfRecord } from '../engine/proc.js';
import { CancelledError, errorMessage } from '../util/errors.js';
import { runTask, type RunTaskOptions } from './run.js';
import type { TaskRequest, TaskResult } from './types.js';

/**
 * Run a task that is already recorded as queued, keeping its state, output and diff in the
 * state store as it goes. The result is stored without the patch (the diff table has it).
 */
export async function runRecorded(
  state: StateStore, taskId: string, spec: EnvSpec, req: TaskRequest, opts: RunTaskOptions = {},
): Promise<TaskResult | null> {
  let pending = Promise.resolve();
  const append = (stream: 'output' | 'event', data: Buffer | string) => {
    pending = pending.then(() => state.taskLogs.append(taskId, stream, data).then(() => {})).catch(() => {});
  };
  try {
    const result = await runTask(spec, req, {
      ...opts,
      taskId,
      onOutput: (chunk) => {
        append('output', chunk);
        opts.onOutput?.(chunk);
      },
      onEvent: (message) => {
        append('event', message);
        opts.onEvent?.(message);
      },
      onVm: (vmId, snapshotId) => {
        void state.tasks.attachVm(taskId, { vmId, snapshotId }).catch(() => {});
        opts.onVm?.(vmId, snapshotId);
      },
    });
    await pending;
    if (result.diff) {
      await state.taskLogs.putDiff(taskId, {
        patch: result.diff.patchBytes ?? Buffer.alloc(0), stats: result.diff.stats, tooLarge: result.diff.stats.tooLarge,
      });
    }
    const stored = { ...result, diff: result.diff ? { ...result.diff, patch: null, patchBytes: undefined } : null };
    if (result.status === 'error') await state.tasks.markError(taskId, result.message ?? 'error', stored);
    else await state.tasks.markFinished(taskId, result.status, stored);
    return result;
  } catch (err) {
    await pending;
    if (err instanceof CancelledError) await state.tasks.markFinished(taskId, 'cancelled', { message: err.message });
    else await state.tasks.markError(taskId, errorMessage(err));
    throw err;
  }
}

/** Record a new task and run it at once in this process (the CLI's path). */
export async function submitAndRun(state: StateStore, spec: EnvSpec, req: TaskRequest, opts: RunTaskOptions = {}) {
  const task = await state.tasks.create({ envName: spec.name, request: req });
  await state.tasks.start(task.id, selfRecord());
  return runRecorded(state, task.id, spec, req, opts);
}
