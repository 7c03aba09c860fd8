import { PrewarmError } from '../util/errors.js';

/** Running a task's command or collecting its result failed in a way that is not the
 * command's own failure (a command that exits non-zero or is OOM-killed is a result). */
export class TaskError extends PrewarmError {
  readonly taskId: string;

  constructor(taskId: string, message: string, options?: { cause?: unknown; code?: string }) {
    super(options?.code ?? 'TASK', `task ${taskId}: ${message}`, options);
    this.taskId = taskId;
  }
}
