import type { StateStore } from '../state/db.js';
import type { EnvSpec } from '../env/spec.js';
import { selfRecord } from '../engine/proc.js';
import { CancelledError, errorMessage } from '../util/errors.js';
import { runTask, type RunTaskOptions } from './run.js';
import type { TaskRequest, TaskResult } from './types.js';

/** Output kept per task in the state store; the rest is counted, not stored. The command
 * itself is not limited (its whole output stays in the guest's log while the VM lives). */
export const STORED_OUTPUT_MAX_BYTES = 256 * 2 ** 20;

/**
 * Keeps the first `maxBytes` of a task's output through `append`, then one event saying the
 * rest is dropped; finish() adds how much was.
 */
export function cappedOutput(append: (stream: 'output' | 'event', data: Buffer | string) => void, maxBytes: number) {
  let storedBytes = 0;
  let droppedBytes = 0;
  const limit = `${Math.round(maxBytes / 2 ** 20)} MiB`;
  return {
    store(chunk: Buffer): void {
      const room = maxBytes - storedBytes;
      if (room >= chunk.length) {
        append('output', chunk);
        storedBytes += chunk.length;
        return;
      }
      if (room > 0) append('output', chunk.subarray(0, room));
      storedBytes = maxBytes;
      if (droppedBytes === 0) append('event', `output past ${limit} is not stored; the task goes on`);
      droppedBytes += chunk.length - room;
    },
    finish(): void {
      if (droppedBytes > 0) append('event', `${droppedBytes} bytes of output were not stored (past the ${limit} kept per task)`);
    },
  };
}

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
  const output = cappedOutput(append, STORED_OUTPUT_MAX_BYTES);
  try {
    const result = await runTask(spec, req, {
      ...opts,
      taskId,
      onOutput: (chunk) => {
        output.store(chunk);
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
    output.finish();
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
    output.finish();
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
