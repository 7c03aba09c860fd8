import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { openState, type State } from '../../src/state/db.js';
import { LATEST_SCHEMA_VERSION, MIGRATIONS, migrate } from '../../src/state/migrations.js';
import { InputError, NotFoundError, PrewarmError } from '../../src/util/errors.js';

const SPEC = 'name: web\nrepository: { url: https://example.com/web.git }\nenv:\n  TOKEN: ${TOKEN}\n';

let dir: string;
let path: string;
let state: State;
let clockMs: number;

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'prewarm-state-'));
  path = join(dir, 'nested', 'state.db');
  clockMs = 1_700_000_000_000;
  state = openState(path, { nowMs: () => clockMs });
});

afterEach(async () => {
  state.close();
  await rm(dir, { recursive: true, force: true });
});

describe('openState', () => {
  it('migrates once: opening again (and concurrently) applies nothing twice', () => {
    const again = openState(path);
    const third = openState(path);
    again.close();
    third.close();
    third.close(); // close is idempotent

    const db = new Database(path, { readonly: true });
    const versions = db.prepare('SELECT version FROM schema_version ORDER BY version').pluck().all();
    expect(versions).toEqual(MIGRATIONS.map((m) => m.version));
    expect(db.pragma('journal_mode', { simple: true })).toBe('wal');
    db.close();
  });

  it('applies only the migrations a file lacks, in order', () => {
    const db = new Database(path);
    const next = { version: LATEST_SCHEMA_VERSION + 1, name: 'notes', sql: 'CREATE TABLE notes (x TEXT)' };
    expect(migrate(db, path, [...MIGRATIONS, next])).toBe(next.version);
    expect(migrate(db, path, [...MIGRATIONS, next])).toBe(next.version);
    const names = db.prepare('SELECT name FROM schema_version ORDER BY version').pluck().all();
    expect(names).toEqual([...MIGRATIONS.map((m) => m.name), 'notes']);
    db.close();
  });

  it('waits busy_timeout for another process\'s write lock, then reports it', async () => {
    const holder = new Database(path);
    holder.exec('BEGIN IMMEDIATE');
    const waiter = openState(path, { busyTimeoutMs: 300 });
    const startedAt = performance.now();
    await expect(waiter.pools.remove('web')).rejects.toMatchObject({ code: 'SQLITE_BUSY' });
    expect(performance.now() - startedAt).toBeGreaterThanOrEqual(250);
    holder.exec('ROLLBACK');
    expect(await waiter.pools.remove('web')).toBe(false);
    holder.close();
    waiter.close();
  });

  it('refuses a file written by a newer schema, naming the versions', () => {
    state.close();
    const db = new Database(path);
    db.prepare('INSERT INTO schema_version VALUES (?, ?, ?)').run(LATEST_SCHEMA_VERSION + 1, 'future', 0);
    db.close();
    expect(() => openState(path)).toThrow(PrewarmError);
    expect(() => openState(path)).toThrow(/schema version \d+, newer than this prewarm knows/);
  });
});

describe('environments', () => {
  it('upserts, gets and lists', async () => {
    const created = await state.environments.upsert({ name: 'web', specPath: '/s/web.yaml', specYaml: SPEC });
    expect(created).toMatchObject({
      name: 'web', specYaml: SPEC, agentsMd: null, currentSnapshotId: null, lastInputs: null,
    });
    expect(created.createdAt.getTime()).toBe(clockMs);
    await state.environments.upsert({ name: 'api', specPath: '/s/api.yaml', specYaml: 'name: api\n' });

    clockMs += 1000;
    const updated = await state.environments.upsert({
      name: 'web', specPath: '/s/web2.yaml', specYaml: SPEC, agentsMd: '# Agents',
    });
    expect(updated.specPath).toBe('/s/web2.yaml');
    expect(updated.agentsMd).toBe('# Agents');
    expect(updated.createdAt.getTime()).toBe(clockMs - 1000);
    expect(updated.updatedAt.getTime()).toBe(clockMs);

    // Omitted optional fields keep their values; an explicit null clears them.
    const kept = await state.environments.upsert({ name: 'web', specPath: '/s/web2.yaml', specYaml: SPEC });
    expect(kept.agentsMd).toBe('# Agents');
    const cleared = await state.environments.upsert({
      name: 'web', specPath: '/s/web2.yaml', specYaml: SPEC, agentsMd: null,
    });
    expect(cleared.agentsMd).toBeNull();

    expect((await state.environments.list()).map((e) => e.name)).toEqual(['api', 'web']);
    expect(await state.environments.get('web')).toEqual(cleared);
    expect(await state.environments.get('nope')).toBeUndefined();
  });

  it('sets the current snapshot with its inputs, and removes', async () => {
    await state.environments.upsert({ name: 'web', specPath: '/s/web.yaml', specYaml: SPEC });
    const inputs = { commit: 'abc123', lockfiles: { 'package-lock.json': 'sha256:00' }, tier: 'small' };
    const env = await state.environments.setCurrentSnapshot('web', 'snap-1', {
      lastInputs: inputs, agentsMd: 'hello',
    });
    expect(env).toMatchObject({ currentSnapshotId: 'snap-1', lastInputs: inputs, agentsMd: 'hello' });

    const next = await state.environments.setCurrentSnapshot('web', 'snap-2');
    expect(next).toMatchObject({ currentSnapshotId: 'snap-2', lastInputs: inputs, agentsMd: 'hello' });

    await expect(state.environments.setCurrentSnapshot('nope', 'snap-1')).rejects.toThrow(NotFoundError);
    expect(await state.environments.remove('web')).toBe(true);
    expect(await state.environments.remove('web')).toBe(false);
    expect(await state.environments.get('web')).toBeUndefined();
  });
});

describe('pools', () => {
  it('sets, gets, lists and removes; follows its environment', async () => {
    await state.environments.upsert({ name: 'web', specPath: '/s/web.yaml', specYaml: SPEC });
    await state.environments.upsert({ name: 'api', specPath: '/s/api.yaml', specYaml: SPEC });

    expect(await state.pools.set('web', 2)).toMatchObject({ envName: 'web', targetSize: 2 });
    clockMs += 5;
    expect(await state.pools.set('web', 3)).toMatchObject({ targetSize: 3, updatedAt: new Date(clockMs) });
    await state.pools.set('api', 0);
    expect((await state.pools.list()).map((p) => [p.envName, p.targetSize])).toEqual([['api', 0], ['web', 3]]);
    expect(await state.pools.get('web')).toMatchObject({ targetSize: 3 });

    await expect(state.pools.set('web', -1)).rejects.toThrow(InputError);
    await expect(state.pools.set('web', 1.5)).rejects.toThrow(InputError);
    await expect(state.pools.set('ghost', 1)).rejects.toThrow(NotFoundError);

    expect(await state.pools.remove('api')).toBe(true);
    expect(await state.pools.remove('api')).toBe(false);
    await state.environments.remove('web');
    expect(await state.pools.get('web')).toBeUndefined();
  });
});
