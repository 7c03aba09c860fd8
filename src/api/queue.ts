import { isAlive, selfRecord } from '../engine/proc.js';
import { loadSpec, type EnvSpec } from '../env/spec.js';
import type { StateStore, Task } from '../state/db.js';
import { CancelledError, NotFoundError, PrewarmError, errorMessage } from '../util/errors.js';
import { logger } from '../util/log.js';
import type { TaskRunner } from './runner.js';

/** May one more VM start now? `running` counts this service's tasks in flight. */
export type Admit = (ctx: { running: number }) => boolean | Promise<boolean>;

/**
 * Holds tasks back before they are claimed; by default only the concurrency limit does. The
 * host memory budget is applied later, by the runner's VM source: a claimed task waits there
 * (status 'running', a "needs ... missing" event in its log) until its tier fits.
 */
export const admitAlways: Admit = () => true;

export interface TaskQueueOptions {
  state: StateStore;
  runner: TaskRunner;
  /** Tasks run at once by this service; default 2. */
  concurrency?: number;
  admit?: Admit;
  /** How often to look for work nobody kicked the queue about (other processes, retries
   * after a refused admission); default 1000. */
  pollMs?: number;
  /** Called after each task this queue ran has ended (metrics). */
  onSettled?: (taskId: string) => void;
}

interface Active {
  task: Task;
  controller: AbortController;
  done: Promise<void>;
}

/**
 * The service's task queue. Queued tasks live in the state store, so they survive a restart;
 * this class claims them oldest first (claimNext is atomic, so another process sharing the
 * state never runs the same task) and runs at most `concurrency` at once.
 *
 * Lifecycle: new -> start() (recovers orphans, starts claiming) -> stop(graceMs) (claims
 * nothing more, waits for running tasks, cancels what is left at the deadline). Queued tasks
 * stay queued across stop(), for the next start.
 */
export class TaskQueue {
  readonly concurrency: number;
  private readonly active = new Map<string, Active>();
  private readonly log = logger({ part: 'queue' });
  private readonly admit: Admit;
  private timer: NodeJS.Timeout | undefined;
  private accepting = false;
  private pumping: Promise<void> | undefined;
  private again = false;

  constructor(private readonly opts: TaskQueueOptions) {
    this.concurrency = opts.concurrency ?? 2;
    if (!Number.isInteger(this.concurrency) || this.concurrency < 1) {
      throw new PrewarmError('BAD_INPUT', `concurrency must be a whole number >= 1, got ${this.concurrency}`);
    }
    this.admit = opts.admit ?? admitAlways;
  }

  /** Mark tasks of dead runners 'error' (returned), then start claiming queued tasks. */
  async start(): Promise<Task[]> {
    const recovered = await this.opts.state.tasks.recoverOrphans(
      (runner) => isAlive(runner.pid, runner.startTime),
    );
    for (const task of recovered) {
      this.log.warn({ taskId: task.id, reason: task.error }, 'marked an orphaned task error');
    }
    this.accepting = true;
    this.timer = setInterval(() => this.kick(), this.opts.pollMs ?? 1000);
    this.timer.unref();
    this.kick();
    return recovered;
  }

  /** Look for work now (after a submit, or when a slot frees). */
  kick(): void {
    if (this.pumping) {
      this.again = true;
      return;
    }
    this.pumping = this.pump().finally(() => {
      this.pumping = undefined;
    });
  }

  get running(): number {
    return this.active.size;
  }

  isActive(taskId: string): boolean {
    return this.active.has(taskId);
  }

  /**
   * Cancel a task: a queued one at once; a running one of this queue is marked cancelled and
   * its runner aborted (the slot frees when its VM is gone). Returns the task as stored.
   */
  async cancel(taskId: string, reason = 'cancelled through the API'): Promise<Task> {
    const tasks = this.opts.state.tasks;
    let task = await tasks.get(taskId);
    if (!task) throw new NotFoundError(`task ${taskId} does not exist; list tasks to see their ids`);

    if (task.status === 'queued') {
      await tasks.markFinished(taskId, 'cancelled', { message: reason });
      task = (await tasks.get(taskId))!;
      // A worker may have claimed it in between; then it is running and handled below.
      if (task.status === 'cancelled') {
        await this.note(taskId, reason);
        return task;
      }
    }
    if (task.status !== 'running') {
      throw new PrewarmError('CONFLICT', `task ${taskId} has already ended (${task.status}); nothing to cancel`);
    }

    // Ours even when not yet in `active`: claimed by this process a moment ago, about to launch
    // (runOne then finds it cancelled and skips it).
    const runner = task.runner;
    const self = selfRecord();
    const ours = this.active.has(taskId) || (runner?.pid === self.pid && runner.startTime === self.startTime);
    if (!ours && runner && isAlive(runner.pid, runner.startTime)) {
      throw new PrewarmError('CONFLICT', `task ${taskId} is run by another prewarm process ` +
        `(pid ${runner.pid}); cancel it there`);
    }
    await tasks.markFinished(taskId, 'cancelled', { message: reason });
    await this.note(taskId, reason);
    // Looked up after marking, so a launch that raced with this cancel is aborted too.
    this.active.get(taskId)?.controller.abort(new CancelledError(reason));
    return (await tasks.get(taskId))!;
  }

  /** During stop(): end the grace period now, cancelling the tasks still running. */
  hurry(): void {
    this.endGrace();
  }

  private endGrace: () => void = () => {};

  /**
   * Stop claiming, give running tasks `graceMs` to finish, then cancel the rest and wait until
   * their runners have released their VMs. Queued tasks stay queued.
   */
  async stop(graceMs: number): Promise<{ finished: number; cancelled: string[] }> {
    this.accepting = false;
    clearInterval(this.timer);
    let hurried = false;
    const cut = new Promise<false>((resolve) => {
      this.endGrace = () => {
        hurried = true;
        resolve(false);
      };
    });
    await this.pumping;

    const inFlight = [...this.active.values()];
    const allDone = Promise.all(inFlight.map((a) => a.done));
    const inTime = await Promise.race([withDeadline(allDone, graceMs), cut]);
    const cancelled: string[] = [];
    if (!inTime) {
      const reason = hurried ? 'cancelled: the service was told to stop at once (a second signal)'
        : `cancelled: the service shut down and the ${Math.round(graceMs / 1000)} s grace period ran out`;
      for (const { task } of [...this.active.values()]) {
        await this.cancel(task.id, reason).then(() => cancelled.push(task.id), (err) => {
          this.log.warn({ taskId: task.id, err: errorMessage(err) }, 'cancel at shutdown failed');
        });
      }
      await allDone;
    }
    return { finished: inFlight.length - cancelled.length, cancelled };
  }

  private async pump(): Promise<void> {
    try {
      do {
        this.again = false;
        while (this.accepting && this.active.size < this.concurrency) {
          if (!(await this.admit({ running: this.active.size }))) break;
          const task = await this.opts.state.tasks.claimNext(selfRecord());
          if (!task) break;
          this.launch(task);
        }
      } while (this.again && this.accepting);
    } catch (err) {
      this.log.error({ err: errorMessage(err) }, 'claiming a task failed; retrying on the next poll');
    }
  }

  private launch(task: Task): void {
    const controller = new AbortController();
    this.log.info({ taskId: task.id, envId: task.envName }, 'task started');
    const done = this.runOne(task, controller.signal).finally(() => {
      this.active.delete(task.id);
      this.opts.onSettled?.(task.id);
      this.kick();
    });
    this.active.set(task.id, { task, controller, done });
  }

  private async runOne(task: Task, signal: AbortSignal): Promise<void> {
    const tasks = this.opts.state.tasks;
    try {
      if ((await tasks.get(task.id))?.status !== 'running') return; // cancelled while launching
      const spec = await this.specOf(task);
      if (signal.aborted) return;
      await this.opts.runner.run(task, spec, signal);
    } catch (err) {
      await tasks.markError(task.id, errorMessage(err)).catch(() => false);
      this.log.warn({ taskId: task.id, err: errorMessage(err) }, 'task failed to run');
    }
    const after = await tasks.get(task.id).catch(() => undefined);
    if (after?.status === 'running') {
      await tasks.markError(task.id, 'the task runner ended without recording a result').catch(() => false);
    }
    this.log.info({ taskId: task.id, status: after?.status }, 'task ended');
  }

  private async specOf(task: Task): Promise<EnvSpec> {
    const env = await this.opts.state.environments.get(task.envName);
    if (!env) {
      throw new NotFoundError(`environment ${task.envName} is no longer registered; register it ` +
        'again (POST /v1/environments) and resubmit the task');
    }
    return loadSpec(env.specPath);
  }

  private async note(taskId: string, message: string): Promise<void> {
    await this.opts.state.taskLogs.append(taskId, 'event', message).catch(() => 0);
  }
}

/** true when `promise` settled within `ms`. */
async function withDeadline(promise: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<false>((resolve) => {
    timer = setTimeout(() => resolve(false), ms);
  });
  try {
    return await Promise.race([promise.then(() => true as const), deadline]);
  } finally {
    clearTimeout(timer);
  }
}
