import { EventEmitter } from 'node:events';
import type { Database, Statement, Transaction } from 'better-sqlite3';
import { fromJson, toBytes, toDate, toJson, isSqliteError, type ClockMs } from './sql.js';
import { NotFoundError } from '../util/errors.js';

/** Chunks to read at a time when going through a whole log: a stored chunk is at most 1 MiB
 * (the size a command's output is read from the guest in), so a reader holds a few MiB at a
 * time however large the log. */
export const LOG_READ_BATCH = 8;

/** 'output' is what the task's commands wrote; 'event' is prewarm's own progress lines. */
export type LogStream = 'output' | 'event';
export type LogData = Buffer | Uint8Array | string;

export interface LogChunk {
  /** 1, 2, 3, ... per task, in append order. */
  seq: number;
  stream: LogStream;
  data: Buffer;
  at: Date;
}

export interface TaskDiff {
  /** The git diff, byte-exact (binary patches included). */
  patch: Buffer;
  stats: Record<string, unknown>;
  /** The diff exceeded the size limit; `patch` may be empty or partial. */
  tooLarge: boolean;
}

export interface DiffInput {
  patch: LogData;
  stats: object;
  tooLarge: boolean;
}

export interface TaskLogStore {
  /** Returns the chunk's seq. Throws NotFoundError for an unknown task. */
  append(taskId: string, stream: LogStream, data: LogData): Promise<number>;
  /**
   * Chunks with seq > afterSeq, in order, at most `limit` (default 1000). A poller tails a
   * live task by passing the last seq it has seen.
   */
  read(taskId: string, afterSeq?: number, limit?: number): Promise<LogChunk[]>;
  /** Store (or replace) a task's diff. */
  putDiff(taskId: string, diff: DiffInput): Promise<void>;
  /** Call `listener` after each append made in this process, through any store (appends by
   * other processes are seen only by reading); returns the unsubscribe. */
  onAppend(listener: (taskId: string) => void): () => void;
  getDiff(taskId: string): Promise<TaskDiff | undefined>;
}

interface ChunkRow {
  seq: number;
  stream: LogStream;
  data: Buffer;
  at: number;
}

/** Appends through any store in this process (a runner and the service may each open one). */
const appended = new EventEmitter().setMaxListeners(0);

export class SqliteTaskLogs implements TaskLogStore {
  private readonly readStmt: Statement;
  private readonly putDiffStmt: Statement;
  private readonly getDiffStmt: Statement;
  private readonly appendTx: Transaction<
    (taskId: string, stream: LogStream, data: Buffer) => number
  >;

  constructor(db: Database, private readonly nowMs: ClockMs) {
    const nextSeq = db.prepare(
      'SELECT COALESCE(MAX(seq), 0) + 1 FROM task_logs WHERE task_id = ?',
    ).pluck();
    const insert = db.prepare(
      'INSERT INTO task_logs (task_id, seq, stream, data, at) VALUES (?, ?, ?, ?, ?)',
    );
    // Immediate, so two writers to one task (runner and service) never pick the same seq.
    this.appendTx = db.transaction((taskId, stream, data) => {
      const seq = nextSeq.get(taskId) as number;
      insert.run(taskId, seq, stream, data, this.nowMs());
      return seq;
    });
    this.readStmt = db.prepare(`SELECT seq, stream, data, at FROM task_logs
      WHERE task_id = ? AND seq > ? ORDER BY seq LIMIT ?`);
    this.putDiffStmt = db.prepare(`INSERT INTO task_diffs (task_id, patch, stats, too_large)
      VALUES (?, ?, ?, ?)
      ON CONFLICT (task_id) DO UPDATE SET patch = excluded.patch, stats = excluded.stats,
        too_large = excluded.too_large`);
    this.getDiffStmt = db.prepare('SELECT patch, stats, too_large FROM task_diffs WHERE task_id = ?');
  }

  async append(taskId: string, stream: LogStream, data: LogData): Promise<number> {
    try {
      const seq = this.appendTx.immediate(taskId, stream, toBytes(data));
      appended.emit('append', taskId);
      return seq;
    } catch (err) {
      throw this.translate(err, taskId);
    }
  }

  onAppend(listener: (taskId: string) => void): () => void {
    appended.on('append', listener);
    return () => appended.off('append', listener);
  }

  async read(taskId: string, afterSeq = 0, limit = 1000): Promise<LogChunk[]> {
    const rows = this.readStmt.all(taskId, afterSeq, limit) as ChunkRow[];
    return rows.map((row) => ({
      seq: row.seq, stream: row.stream, data: row.data, at: toDate(row.at),
    }));
  }

  async putDiff(taskId: string, diff: DiffInput): Promise<void> {
    const stats = toJson(diff.stats, 'diff stats');
    try {
      this.putDiffStmt.run(taskId, toBytes(diff.patch), stats, diff.tooLarge ? 1 : 0);
    } catch (err) {
      throw this.translate(err, taskId);
    }
  }

  async getDiff(taskId: string): Promise<TaskDiff | undefined> {
    const row = this.getDiffStmt.get(taskId) as
      { patch: Buffer; stats: string; too_large: number } | undefined;
    if (!row) return undefined;
    return { patch: row.patch, stats: fromJson(row.stats) ?? {}, tooLarge: row.too_large !== 0 };
  }

  private translate(err: unknown, taskId: string): unknown {
    if (!isSqliteError(err, 'SQLITE_CONSTRAINT_FOREIGNKEY')) return err;
    return new NotFoundError(`task ${taskId} does not exist; logs and diffs need a task`);
  }
}
