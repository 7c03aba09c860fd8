import { randomBytes } from 'node:crypto';
import type { Database, Statement, Transaction } from 'better-sqlite3';
import { InputError, NotFoundError } from '../util/errors.js';
import { fromJson, toDate, toJson, type ClockMs } from './sql.js';

export const TASK_STATUSES = [
  'queued', 'running', 'succeeded', 'failed', 'oom_killed', 'timed_out', 'error', 'cancelled',
] as const;
export type TaskStatus = (typeof TASK_STATUSES)[number];
export type FinishedStatus = Exclude<TaskStatus, 'queued' | 'running' | 'error'>;
const FINISHED_STATUSES: readonly string[] = [
  'succeeded', 'failed', 'oom_killed', 'timed_out', 'cancelled',
];

/** The process running a task. The start time tells a live runner from a reused pid. */
export interface Runner {
  pid: number;
  startTime: string;
}

/** What was asked for (commands, commit, timeoutMs, ...). Never secret values. */
export type TaskRequest = Record<string, unknown>;
/** The outcome. A numeric `peakMemoryBytes` is copied to a column for right-sizing. */
export type TaskResult = Record<string, unknown>;

export interface Task {
  id: string;
  envName: string;
  status: TaskStatus;
  request: TaskRequest;
  result: TaskResult | null;
  error: string | null;
  createdAt: Date;
  startedAt: Date | null;
  finishedAt: Date | null;
  snapshotId: string | null;
  vmId: string | null;
  peakMemoryBytes: number | null;
  runner: Runner | null;
}

export interface TaskPeak {
  taskId: string;
  status: TaskStatus;
  peakMemoryBytes: number;
  finishedAt: Date;
}

export interface TaskFilter {
  envName?: string;
  status?: TaskStatus | readonly TaskStatus[];
  /** Newest first; default 50. */
  limit?: number;
}

export interface TaskStore {
  create(input: { envName: string; request: object; snapshotId?: string }): Promise<Task>;
  /** Atomically move the oldest queued task (of one env, if given) to running for `runner`. */
  claimNext(runner: Runner, opts?: { envName?: string }): Promise<Task | undefined>;
  /** queued -> running for one task (the CLI runs its own task at once). */
  start(id: string, runner: Runner): Promise<Task | undefined>;
  /** Record the VM (and snapshot) a running task was given. */
  attachVm(id: string, vm: { vmId: string; snapshotId?: string }): Promise<void>;
  /**
   * running -> a finished status ('cancelled' also from queued). Returns false, changing
   * nothing, when the task is no longer in such a state (for example recovered as orphaned).
   */
  markFinished(id: string, status: FinishedStatus, result: object | null): Promise<boolean>;
  /** queued or running -> 'error' with `reason`; false when the task had already finished. */
  markError(id: string, reason: string, result?: object | null): Promise<boolean>;
  get(id: string): Promise<Task | undefined>;
  list(filter?: TaskFilter): Promise<Task[]>;
  /** Running tasks whose runner is dead become 'error'; returns them as updated. */
  recoverOrphans(isRunnerAlive: (runner: Runner) => boolean): Promise<Task[]>;
  /** Recent finished tasks of an env that recorded a peak, newest first; default 20. */
  peaks(envName: string, limit?: number): Promise<TaskPeak[]>;
}

interface TaskRow {
  id: string;
  env_name: string;
  status: TaskStatus;
  request: string;
  result: string | null;
  error: string | null;
  created_at: number;
  started_at: number | null;
  finished_at: number | null;
  snapshot_id: string | null;
  vm_id: string | null;
  peak_memory_bytes: number | null;
  runner_pid: number | null;
  runner_start_time: string | null;
}

export function newTaskId(): string {
  return `task-${randomBytes(6).toString('hex')}`;
}

function fromRow(row: TaskRow): Task {
  return {
    id: row.id,
    envName: row.env_name,
    status: row.status,
    request: fromJson<TaskRequest>(row.request) ?? {},
    result: fromJson<TaskResult>(row.result),
    error: row.error,
    createdAt: toDate(row.created_at),
    startedAt: toDate(row.started_at),
    finishedAt: toDate(row.finished_at),
    snapshotId: row.snapshot_id,
    vmId: row.vm_id,
    peakMemoryBytes: row.peak_memory_bytes,
    runner: row.runner_pid === null
      ? null
      : { pid: row.runner_pid, startTime: row.runner_start_time ?? '' },
  };
}

function peakOf(result: object | null): number | null {
  const peak = (result as { peakMemoryBytes?: unknown } | null)?.peakMemoryBytes;
  return typeof peak === 'number' && Number.isFinite(peak) ? Math.round(peak) : null;
}

function orphanReason(runner: Runner | null): string {
  return `prewarm stopped while the task was running (runner pid ${runner?.pid ?? 'unknown'} ` +
    'is gone); submit it again';
}

export class SqliteTasks implements TaskStore {
  private readonly stmt: Record<string, Statement>;
  private readonly claimTx: Transaction<(runner: Runner, envName: string | null) => TaskRow | undefined>;
  private readonly recoverTx: Transaction<(alive: (runner: Runner) => boolean) => TaskRow[]>;

  constructor(private readonly db: Database, private readonly nowMs: ClockMs) {
    this.stmt = {
      insert: db.prepare(`INSERT INTO tasks (id, env_name, status, request, created_at, snapshot_id)
        VALUES (?, ?, 'queued', ?, ?, ?) RETURNING *`),
      claim: db.prepare(`UPDATE tasks SET status = 'running', started_at = :now,
          runner_pid = :pid, runner_start_time = :start_time
        WHERE id = (SELECT id FROM tasks WHERE status = 'queued'
          AND (:env_name IS NULL OR env_name = :env_name) ORDER BY created_at, rowid LIMIT 1)
        RETURNING *`),
      start: db.prepare(`UPDATE tasks SET status = 'running', started_at = :now,
          runner_pid = :pid, runner_start_time = :start_time
        WHERE id = :id AND status = 'queued' RETURNING *`),
      attachVm: db.prepare(`UPDATE tasks SET vm_id = :vm_id,
        snapshot_id = COALESCE(:snapshot_id, snapshot_id) WHERE id = :id`),
      finish: db.prepare(`UPDATE tasks SET status = :status, result = :result,
          peak_memory_bytes = :peak, finished_at = :now
        WHERE id = :id AND (status = 'running' OR (status = 'queued' AND :status = 'cancelled'))`),
      error: db.prepare(`UPDATE tasks SET status = 'error', error = :reason, finished_at = :now,
          result = COALESCE(:result, result)
        WHERE id = :id AND status IN ('queued', 'running') RETURNING *`),
      get: db.prepare('SELECT * FROM tasks WHERE id = ?'),
      running: db.prepare(`SELECT * FROM tasks WHERE status = 'running'`),
      peaks: db.prepare(`SELECT id, status, peak_memory_bytes, finished_at FROM tasks
        WHERE env_name = ? AND peak_memory_bytes IS NOT NULL AND finished_at IS NOT NULL
        ORDER BY finished_at DESC, rowid DESC LIMIT ?`),
    };

    // BEGIN IMMEDIATE takes the write lock before reading, so two processes never both see
    // the same task as queued; busy_timeout makes the loser wait instead of failing.
    this.claimTx = db.transaction((runner, envName) => this.stmt.claim.get({
      now: this.nowMs(), pid: runner.pid, start_time: runner.startTime, env_name: envName,
    }) as TaskRow | undefined);

    this.recoverTx = db.transaction((alive) => {
      const recovered: TaskRow[] = [];
      for (const row of this.stmt.running.all() as TaskRow[]) {
        const task = fromRow(row);
        if (task.runner && alive(task.runner)) continue;
        const reason = orphanReason(task.runner);
        const updated = this.stmt.error.get({ id: row.id, reason, now: this.nowMs(), result: null });
        if (updated) recovered.push(updated as TaskRow);
      }
      return recovered;
    });
  }

  async create(input: { envName: string; request: object; snapshotId?: string }): Promise<Task> {
    const request = toJson(input.request, 'task request');
    const row = this.stmt.insert.get(
      newTaskId(), input.envName, request, this.nowMs(), input.snapshotId ?? null,
    ) as TaskRow;
    return fromRow(row);
  }

  async claimNext(runner: Runner, opts: { envName?: string } = {}): Promise<Task | undefined> {
    const row = this.claimTx.immediate(runner, opts.envName ?? null);
    return row && fromRow(row);
  }

  async start(id: string, runner: Runner): Promise<Task | undefined> {
    const row = this.stmt.start.get({ id, now: this.nowMs(), pid: runner.pid, start_time: runner.startTime });
    return row ? fromRow(row as TaskRow) : undefined;
  }

  async attachVm(id: string, vm: { vmId: string; snapshotId?: string }): Promise<void> {
    const changes = this.stmt.attachVm.run({ id, vm_id: vm.vmId, snapshot_id: vm.snapshotId ?? null });
    if (changes.changes === 0) throw this.notFound(id);
  }

  async markFinished(id: string, status: FinishedStatus, result: object | null): Promise<boolean> {
    if (!FINISHED_STATUSES.includes(status)) {
      const allowed = FINISHED_STATUSES.join(', ');
      throw new InputError(`markFinished takes one of ${allowed}; got "${status}"`);
    }
    const { changes } = this.stmt.finish.run({
      id,
      status,
      result: result === null ? null : toJson(result, 'task result'),
      peak: peakOf(result),
      now: this.nowMs(),
    });
    return changes > 0 || this.exists(id);
  }

  async markError(id: string, reason: string, result: object | null = null): Promise<boolean> {
    const json = result === null ? null : toJson(result, 'task result');
    if (this.stmt.error.get({ id, reason, now: this.nowMs(), result: json })) return true;
    return this.exists(id);
  }

  async get(id: string): Promise<Task | undefined> {
    const row = this.stmt.get.get(id) as TaskRow | undefined;
    return row && fromRow(row);
  }

  async list(filter: TaskFilter = {}): Promise<Task[]> {
    const statuses = filter.status === undefined ? [] : [filter.status].flat();
    const limit = filter.limit ?? 50;
    if (!Number.isInteger(limit) || limit < 1) {
      throw new InputError(`limit must be a positive integer, got ${limit}`);
    }

    const where = ['1 = 1'];
    const params: unknown[] = [];
    if (filter.envName !== undefined) {
      where.push('env_name = ?');
      params.push(filter.envName);
    }
    if (statuses.length > 0) {
      where.push(`status IN (${statuses.map(() => '?').join(', ')})`);
      params.push(...statuses);
    }
    const sql = `SELECT * FROM tasks WHERE ${where.join(' AND ')}
      ORDER BY created_at DESC, rowid DESC LIMIT ?`;
    return (this.db.prepare(sql).all(...params, limit) as TaskRow[]).map(fromRow);
  }

  async recoverOrphans(isRunnerAlive: (runner: Runner) => boolean): Promise<Task[]> {
    return this.recoverTx.immediate(isRunnerAlive).map(fromRow);
  }

  async peaks(envName: string, limit = 20): Promise<TaskPeak[]> {
    const rows = this.stmt.peaks.all(envName, limit) as
      { id: string; status: TaskStatus; peak_memory_bytes: number; finished_at: number }[];
    return rows.map((row) => ({
      taskId: row.id,
      status: row.status,
      peakMemoryBytes: row.peak_memory_bytes,
      finishedAt: toDate(row.finished_at),
    }));
  }

  /** false if the task exists (it was in the wrong state); NotFoundError if it does not. */
  private exists(id: string): false {
    if (this.stmt.get.get(id) === undefined) throw this.notFound(id);
    return false;
  }

  private notFound(id: string): NotFoundError {
    return new NotFoundError(`task ${id} does not exist; list tasks to see their ids`);
  }
}
