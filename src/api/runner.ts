import type { EnvSpec } from '../env/spec.js';
import type { StateStore, Task } from '../state/db.js';
import type { TaskRequest } from '../task/types.js';
import type { VmSource } from '../task/acquire.js';

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
 * The real runner: runRecorded (restore, run, diff, destroy). A cancel aborts `signal`; the
 * task stops where it is and its VM is destroyed before run() resolves.
 */
export function vmTaskRunner(state: StateStore, vmSource?: VmSource): TaskRunner {
  return {
    async run(task, spec, signal) {
      // Imported on first use: the task part loads the engine, which unit tests never need.
      const { runRecorded } = await import('../task/record.js');
      await runRecorded(state, task.id, spec, task.request as unknown as TaskRequest, { vmSource, signal });
    },
  };
}
