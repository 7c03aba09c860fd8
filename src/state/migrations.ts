import type { Database } from 'better-sqlite3';
import { PrewarmError } from '../util/errors.js';

/**
 * Ordered schema migrations. Append only: a released migration is never edited, a change is
 * a new entry. `schema_version` holds one row per applied migration.
 */
export interface Migration {
  version: number;
  name: string;
  sql: string;
}

export const MIGRATIONS: readonly Migration[] = [
  {
    version: 1,
    name: 'environments, tasks, task logs and diffs, pools',
    sql: `
      CREATE TABLE environments (
        name TEXT PRIMARY KEY,
        spec_path TEXT NOT NULL,
        spec_yaml TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        agents_md TEXT,
        current_snapshot_id TEXT,
        last_inputs TEXT
      ) STRICT;

      -- No foreign key to environments: a task's history outlives its environment.
      CREATE TABLE tasks (
        id TEXT PRIMARY KEY,
        env_name TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed',
          'oom_killed', 'timed_out', 'error', 'cancelled')),
        request TEXT NOT NULL,
        result TEXT,
        error TEXT,
        created_at INTEGER NOT NULL,
        started_at INTEGER,
        finished_at INTEGER,
        snapshot_id TEXT,
        vm_id TEXT,
        peak_memory_bytes INTEGER,
        runner_pid INTEGER,
        runner_start_time TEXT
      ) STRICT;
      CREATE INDEX tasks_by_status ON tasks (status, created_at);
      CREATE INDEX tasks_by_env ON tasks (env_name, created_at);

      CREATE TABLE task_logs (
        task_id TEXT NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
        seq INTEGER NOT NULL,
        stream TEXT NOT NULL CHECK (stream IN ('output', 'event')),
        data BLOB NOT NULL,
        at INTEGER NOT NULL,
        PRIMARY KEY (task_id, seq)
      ) STRICT, WITHOUT ROWID;

      CREATE TABLE task_diffs (
        task_id TEXT PRIMARY KEY REFERENCES tasks (id) ON DELETE CASCADE,
        patch BLOB NOT NULL,
        stats TEXT NOT NULL,
        too_large INTEGER NOT NULL
      ) STRICT;

      CREATE TABLE pools (
        env_name TEXT PRIMARY KEY REFERENCES environments (name) ON DELETE CASCADE,
        target_size INTEGER NOT NULL CHECK (target_size >= 0),
        updated_at INTEGER NOT NULL
      ) STRICT;
    `,
  },
];

export const LATEST_SCHEMA_VERSION = MIGRATIONS[MIGRATIONS.length - 1].version;

/** The highest applied version, read without taking the write lock; 0 for a new file. */
function appliedVersion(db: Database): number {
  const table = db.prepare(
    `SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'`,
  );
  if (table.get() === undefined) return 0;
  return db.prepare('SELECT COALESCE(MAX(version), 0) FROM schema_version').pluck().get() as number;
}

/**
 * Apply the migrations the file lacks, in one BEGIN IMMEDIATE transaction that re-reads the
 * version, so two processes opening a new file at once apply each migration exactly once.
 * An up-to-date file is only read, so opening never waits for another process's writes.
 */
export function migrate(db: Database, path: string, migrations = MIGRATIONS): number {
  const latest = migrations[migrations.length - 1]?.version ?? 0;
  const found = appliedVersion(db);
  if (found > latest) {
    throw new PrewarmError(
      'STATE_SCHEMA',
      `${path} has schema version ${found}, newer than this prewarm knows (${latest}); ` +
        'upgrade prewarm, or point PREWARM_HOME elsewhere',
    );
  }
  if (found === latest) return found;

  db.transaction(() => {
    db.exec(`CREATE TABLE IF NOT EXISTS schema_version (
      version INTEGER PRIMARY KEY,
      name TEXT NOT NULL,
      applied_at INTEGER NOT NULL
    ) STRICT`);
    const record = db.prepare(
      'INSERT INTO schema_version (version, name, applied_at) VALUES (?, ?, ?)',
    );
    const current = appliedVersion(db);
    for (const migration of migrations.filter((m) => m.version > current)) {
      db.exec(migration.sql);
      record.run(migration.version, migration.name, Date.now());
    }
  }).immediate();
  return appliedVersion(db);
}
