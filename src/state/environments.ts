import type { Database, Statement } from 'better-sqlite3';
import { NotFoundError } from '../util/errors.js';
import { fromJson, toDate, toJson, type ClockMs } from './sql.js';

/** A registered environment and the snapshot it currently runs tasks from. */
export interface Environment {
  name: string;
  specPath: string;
  /** The spec as written. It holds `${VAR}` references, never resolved secret values. */
  specYaml: string;
  createdAt: Date;
  updatedAt: Date;
  agentsMd: string | null;
  currentSnapshotId: string | null;
  /** The inputs the current snapshot was made from (the cache key's parts), as JSON. */
  lastInputs: Record<string, unknown> | null;
}

/** Omitted optional fields keep their stored values on update. */
export interface EnvironmentInput {
  name: string;
  specPath: string;
  specYaml: string;
  agentsMd?: string | null;
  lastInputs?: object | null;
}

export interface SnapshotUpdate {
  agentsMd?: string | null;
  lastInputs?: object | null;
}

export interface EnvironmentStore {
  upsert(input: EnvironmentInput): Promise<Environment>;
  get(name: string): Promise<Environment | undefined>;
  /** Sorted by name. */
  list(): Promise<Environment[]>;
  /** Throws NotFoundError when the environment is not registered. */
  setCurrentSnapshot(
    name: string,
    snapshotId: string | null,
    update?: SnapshotUpdate,
  ): Promise<Environment>;
  /** Also removes its pool. Returns false when there was nothing to remove. */
  remove(name: string): Promise<boolean>;
}

interface EnvironmentRow {
  name: string;
  spec_path: string;
  spec_yaml: string;
  created_at: number;
  updated_at: number;
  agents_md: string | null;
  current_snapshot_id: string | null;
  last_inputs: string | null;
}

function fromRow(row: EnvironmentRow): Environment {
  return {
    name: row.name,
    specPath: row.spec_path,
    specYaml: row.spec_yaml,
    createdAt: toDate(row.created_at),
    updatedAt: toDate(row.updated_at),
    agentsMd: row.agents_md,
    currentSnapshotId: row.current_snapshot_id,
    lastInputs: fromJson(row.last_inputs),
  };
}

// In the statements below, a :keep_* flag of 1 keeps the stored value of an omitted field.
export class SqliteEnvironments implements EnvironmentStore {
  private readonly upsertStmt: Statement;
  private readonly getStmt: Statement;
  private readonly listStmt: Statement;
  private readonly setSnapshotStmt: Statement;
  private readonly removeStmt: Statement;

  constructor(db: Database, private readonly nowMs: ClockMs) {
    this.upsertStmt = db.prepare(`
      INSERT INTO environments (name, spec_path, spec_yaml, created_at, updated_at, agents_md,
        last_inputs)
      VALUES (:name, :spec_path, :spec_yaml, :now, :now, :agents_md, :last_inputs)
      ON CONFLICT (name) DO UPDATE SET
        spec_path = excluded.spec_path,
        spec_yaml = excluded.spec_yaml,
        updated_at = excluded.updated_at,
        agents_md = IIF(:keep_agents_md, agents_md, excluded.agents_md),
        last_inputs = IIF(:keep_last_inputs, last_inputs, excluded.last_inputs)
      RETURNING *`);
    this.getStmt = db.prepare('SELECT * FROM environments WHERE name = ?');
    this.listStmt = db.prepare('SELECT * FROM environments ORDER BY name');
    this.setSnapshotStmt = db.prepare(`
      UPDATE environments SET
        current_snapshot_id = :snapshot_id,
        updated_at = :now,
        agents_md = IIF(:keep_agents_md, agents_md, :agents_md),
        last_inputs = IIF(:keep_last_inputs, last_inputs, :last_inputs)
      WHERE name = :name
      RETURNING *`);
    this.removeStmt = db.prepare('DELETE FROM environments WHERE name = ?');
  }

  async upsert(input: EnvironmentInput): Promise<Environment> {
    const row = this.upsertStmt.get({
      name: input.name,
      spec_path: input.specPath,
      spec_yaml: input.specYaml,
      now: this.nowMs(),
      ...this.optionalFields(input),
    }) as EnvironmentRow;
    return fromRow(row);
  }

  async get(name: string): Promise<Environment | undefined> {
    const row = this.getStmt.get(name) as EnvironmentRow | undefined;
    return row && fromRow(row);
  }

  async list(): Promise<Environment[]> {
    return (this.listStmt.all() as EnvironmentRow[]).map(fromRow);
  }

  async setCurrentSnapshot(
    name: string,
    snapshotId: string | null,
    update: SnapshotUpdate = {},
  ): Promise<Environment> {
    const row = this.setSnapshotStmt.get({
      name,
      snapshot_id: snapshotId,
      now: this.nowMs(),
      ...this.optionalFields(update),
    }) as EnvironmentRow | undefined;
    if (!row) throw new NotFoundError(`environment "${name}" is not registered; add it first`);
    return fromRow(row);
  }

  async remove(name: string): Promise<boolean> {
    return this.removeStmt.run(name).changes > 0;
  }

  private optionalFields(fields: SnapshotUpdate) {
    return {
      agents_md: fields.agentsMd ?? null,
      keep_agents_md: fields.agentsMd === undefined ? 1 : 0,
      last_inputs: fields.lastInputs == null ? null : toJson(fields.lastInputs, 'lastInputs'),
      keep_last_inputs: fields.lastInputs === undefined ? 1 : 0,
    };
  }
}
