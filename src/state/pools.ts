import type { Database, Statement } from 'better-sqlite3';
import { InputError, NotFoundError } from '../util/errors.js';
import { isSqliteError, toDate, type ClockMs } from './sql.js';

/** How many warm VMs to keep restored for an environment. */
export interface Pool {
  envName: string;
  targetSize: number;
  updatedAt: Date;
}

export interface PoolStore {
  /** Throws NotFoundError when the environment is not registered. */
  set(envName: string, targetSize: number): Promise<Pool>;
  get(envName: string): Promise<Pool | undefined>;
  /** Sorted by environment name. */
  list(): Promise<Pool[]>;
  remove(envName: string): Promise<boolean>;
}

interface PoolRow {
  env_name: string;
  target_size: number;
  updated_at: number;
}

function fromRow(row: PoolRow): Pool {
  return { envName: row.env_name, targetSize: row.target_size, updatedAt: toDate(row.updated_at) };
}

export class SqlitePools implements PoolStore {
  private readonly setStmt: Statement;
  private readonly getStmt: Statement;
  private readonly listStmt: Statement;
  private readonly removeStmt: Statement;

  constructor(db: Database, private readonly nowMs: ClockMs) {
    this.setStmt = db.prepare(`INSERT INTO pools (env_name, target_size, updated_at) VALUES (?, ?, ?)
      ON CONFLICT (env_name) DO UPDATE SET target_size = excluded.target_size,
        updated_at = excluded.updated_at
      RETURNING *`);
    this.getStmt = db.prepare('SELECT * FROM pools WHERE env_name = ?');
    this.listStmt = db.prepare('SELECT * FROM pools ORDER BY env_name');
    this.removeStmt = db.prepare('DELETE FROM pools WHERE env_name = ?');
  }

  async set(envName: string, targetSize: number): Promise<Pool> {
    if (!Number.isInteger(targetSize) || targetSize < 0) {
      throw new InputError(
        `pool size for "${envName}" must be a whole number >= 0, got ${targetSize}`,
      );
    }
    try {
      return fromRow(this.setStmt.get(envName, targetSize, this.nowMs()) as PoolRow);
    } catch (err) {
      if (!isSqliteError(err, 'SQLITE_CONSTRAINT_FOREIGNKEY')) throw err;
      throw new NotFoundError(
        `environment "${envName}" is not registered; add it before sizing its pool`,
      );
    }
  }

  async get(envName: string): Promise<Pool | undefined> {
    const row = this.getStmt.get(envName) as PoolRow | undefined;
    return row && fromRow(row);
  }

  async list(): Promise<Pool[]> {
    return (this.listStmt.all() as PoolRow[]).map(fromRow);
  }

  async remove(envName: string): Promise<boolean> {
    return this.removeStmt.run(envName).changes > 0;
  }
}
