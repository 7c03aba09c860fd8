import { join } from 'node:path';
import type { EnvSpec } from '../env/spec.js';
import type { StateStore, Task } from '../state/db.js';
import type { TaskRequest } from '../task/types.js';
import type { VmSource } from '../task/acquire.js';
import { errorMessage } from '../util/errors.js';
import { logger } from '../util/log.js';
import { paths } from '../util/paths.js';

/**
 * Runs one claimed task (status 'running') to its end. It records the outcome in the state
 * store (finished or error, logs, diff) and resolves only once every resource the task held
 * (its VM) is released. When `signal` aborts, the task has already been marked cancelled and
 * the runner must stop it as fast as it can (the signal may already be aborted when run() is
 * called). The queue swaps in a fake in unit tests.
 */
export interface TaskRunner {
  run(task: Task, spec: EnvSpec, signal: AbortSignal): Promise<void>;
}

/**
 * The real runner: runRecorded (restore, run, diff, destroy).
 *
 * Cancellation: runTask takes no AbortSignal yet, so a cancel destroys the task's VM from
 * outside (SIGKILL to its QEMU); runTask then sees the VM die, ends, and cleans up as after
 * any VM death. A cancel that arrives before the VM exists (while a stale snapshot is being
 * rebuilt, say) takes effect when the VM appears. Remove the kill once runTask accepts
 * `signal` in RunTaskOptions and stops between steps by itself.
 */
export function vmTaskRunner(state: StateStore, vmSource?: VmSource): TaskRunner {
  return {
    async run(task, spec, signal) {
      // Imported on first use: the task part loads the engine, which unit tests never need.
      const { runRecorded } = await import('../task/record.js');
      const log = logger({ part: 'api', taskId: task.id });
      let vmId: string | undefined;
      const stop = () => {
        if (!vmId) return;
        void killVmById(vmId).catch((err) => {
          log.warn({ vmId, err: errorMessage(err) }, 'cancel: kill failed');
        });
      };
      signal.addEventListener('abort', stop, { once: true });
      try {
        await runRecorded(state, task.id, spec, task.request as unknown as TaskRequest, {
          vmSource,
          onVm: (id) => {
            vmId = id;
            if (signal.aborted) stop();
          },
        });
      } finally {
        signal.removeEventListener('abort', stop);
      }
    },
  };
}

/** SIGKILL a VM's QEMU and remove its directory (no-op when it is already gone). */
export async function killVmById(vmId: string): Promise<void> {
  const { killVm, readRecord } = await import('../engine/reaper.js');
  const dir = join(paths.vms(), vmId);
  const record = await readRecord(dir);
  if (record) await killVm(record, dir);
}
