import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import Database from 'better-sqlite3';
import { errorMessage, PrewarmError } from '../util/errors.js';
import { paths } from '../util/paths.js';
import { SqliteEnvironments, type EnvironmentStore } from './environments.js';
import { migrate } from './migrations.js';
import { SqlitePools, type PoolStore } from './pools.js';
import type { ClockMs } from './sql.js';
import { SqliteTaskLogs, type TaskLogStore } from './task-logs.js';
import { SqliteTasks, type TaskStore } from './tasks.js';

export type { Environment, EnvironmentInput, EnvironmentStore, SnapshotUpdate } from './environments.js';
export type { Pool, PoolStore } from './pools.js';
export type { DiffInput, LogChunk, LogData, LogStream, TaskDiff, TaskLogStore } from './task-logs.js';
export type {
  FinishedStatus, Runner, Task, TaskFilter, TaskPeak, TaskRequest, TaskResult, TaskStatus, TaskStore,
} from './tasks.js';
export { TASK_STATUSES, newTaskId } from './tasks.js';

/**
 * prewarm's persistent state, as repositories. Every method returns a promise although the
 * SQLite implementation is synchronous underneath: a PostgreSQL implementation (for several
 * hosts, see DESIGN.md "Scale beyond one host") can then be added beside this one without
 * changing callers.
 */
export interface StateStore {
  readonly environments: EnvironmentStore;
  readonly tasks: TaskStore;
  readonly taskLogs: TaskLogStore;
  readonly pools: PoolStore;
  /** Safe to call twice. */
  close(): void;
  [Symbol.dispose](): void;
}

export type State = StateStore;

export interface OpenStateOptions {
  /** How long a write waits for another process's transaction; default 5000. */
  busyTimeoutMs?: number;
  /** Epoch milliseconds; tests swap it. */
  nowMs?: ClockMs;
}

/**
 * Open (creating and migrating if needed) the SQLite state file. WAL lets the CLI read
 * while the service writes; busy_timeout makes concurrent writers from other processes
 * wait for the lock instead of failing with SQLITE_BUSY.
 */
export function openState(path: string = paths.database(), opts: OpenStateOptions = {}): State {
  if (path !== ':memory:') mkdirSync(dirname(path), { recursive: true });
  const db = new Database(path);
  try {
    // busy_timeout first: switching a new file to WAL needs a lock another opener may hold.
    db.pragma(`busy_timeout = ${Math.round(opts.busyTimeoutMs ?? 5000)}`);
    db.pragma('journal_mode = WAL');
    db.pragma('synchronous = NORMAL');
    db.pragma('foreign_keys = ON');
    migrate(db, path);
  } catch (err) {
    db.close();
    if (err instanceof PrewarmError) throw err;
    const hint = 'check that the directory is writable and the file is not corrupt';
    const message = `cannot open the state database ${path}: ${errorMessage(err)}; ${hint}`;
    throw new PrewarmError('STATE_OPEN', message, { cause: err });
  }
  return new SqliteState(db, opts.nowMs ?? Date.now);
}

class SqliteState implements StateStore {
  readonly environments: SqliteEnvironments;
  readonly tasks: SqliteTasks;
  readonly taskLogs: SqliteTaskLogs;
  readonly pools: SqlitePools;

  constructor(private readonly db: Database.Database, nowMs: ClockMs) {
    this.environments = new SqliteEnvironments(db, nowMs);
    this.tasks = new SqliteTasks(db, nowMs);
    this.taskLogs = new SqliteTaskLogs(db, nowMs);
    this.pools = new SqlitePools(db, nowMs);
  }

  close(): void {
    if (this.db.open) this.db.close();
  }

  [Symbol.dispose](): void {
    this.close();
  }
}
