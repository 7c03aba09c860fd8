import Database from 'better-sqlite3';
import { describe, expect, it } from 'vitest';
import { openState } from '../../src/state/db.js';
import { LATEST_SCHEMA_VERSION, MIGRATIONS, migrate } from '../../src/state/migrations.js';
import { InputError, NotFoundError, PrewarmError } from '../../src/util/errors.js';
import { useTempState } from './temp-state.js';

const SPEC = 'name: web\nrepository: { url: https://example.com/web.git }\nenv:\n  TOKEN: ${TOKEN}\n';


const t = useTempState({ nested: true });

describe('openState', () => {
  it('migrates once: opening again (and concurrently) applies nothing twice', () => {
    const again = openState(t.path);
    const third = openState(t.path);
    again.close();
    third.close();
    third.close(); // close is idempotent

    const db = new Database(t.path, { readonly: true });
    const versions = db.prepare('SELECT version FROM schema_version ORDER BY version').pluck().all();
    expect(versions).toEqual(MIGRATIONS.map((m) => m.version));
    expect(db.pragma('journal_mode', { simple: true })).toBe('wal');
    db.close();
  });

  it('applies only the migrations a file lacks, in order', () => {
    const db = new Database(t.path);
    const next = { version: LATEST_SCHEMA_VERSION + 1, name: 'notes', sql: 'CREATE TABLE notes (x TEXT)' };
    expect(migrate(db, t.path, [...MIGRATIONS, next])).toBe(next.version);
    expect(migrate(db, t.path, [...MIGRATIONS, next])).toBe(next.version);
    const names = db.prepare('SELECT name FROM schema_version ORDER BY version').pluck().all();
    expect(names).toEqual([...MIGRATIONS.map((m) => m.name), 'notes']);
    db.close();
  });

  it('waits busy_timeout for another process\'s write lock, then reports it', async () => {
    const holder = new Database(t.path);
    holder.exec('BEGIN IMMEDIATE');
    const waiter = openState(t.path, { busyTimeoutMs: 300 });
    const startedAt = performance.now();
    await expect(waiter.pools.remove('web')).rejects.toMatchObject({ code: 'SQLITE_BUSY' });
    expect(performance.now() - startedAt).toBeGreaterThanOrEqual(250);
    holder.exec('ROLLBACK');
    expect(await waiter.pools.remove('web')).toBe(false);
    holder.close();
    waiter.close();
  });

  it('refuses a file written by a newer schema, naming the versions', () => {
    t.state.close();
    const db = new Database(t.path);
    db.prepare('INSERT INTO schema_version VALUES (?, ?, ?)').run(LATEST_SCHEMA_VERSION + 1, 'future', 0);
    db.close();
    expect(() => openState(t.path)).toThrow(PrewarmError);
    expect(() => openState(t.path)).toThrow(/schema version \d+, newer than this prewarm knows/);
  });
});

describe('environments', () => {
  it('upserts, gets and lists', async () => {
    const created = await t.state.environments.upsert({ name: 'web', specPath: '/s/web.yaml', specYaml: SPEC });
    expect(created).toMatchObject({
      name: 'web', specYaml: SPEC, agentsMd: null, currentSnapshotId: null, lastInputs: null,
    });
    expect(created.createdAt.getTime()).toBe(t.clockMs);
    await t.state.environments.upsert({ name: 'api', specPath: '/s/api.yaml', specYaml: 'name: api\n' });

    t.clockMs += 1000;
    const updated = await t.state.environments.upsert({
      name: 'web', specPath: '/s/web2.yaml', specYaml: SPEC, agentsMd: '# Agents',
    });
    expect(updated.specPath).toBe('/s/web2.yaml');
    expect(updated.agentsMd).toBe('# Agents');
    expect(updated.createdAt.getTime()).toBe(t.clockMs - 1000);
    expect(updated.updatedAt.getTime()).toBe(t.clockMs);

    // Omitted optional fields keep their values; an explicit null clears them.
    const kept = await t.state.environments.upsert({ name: 'web', specPath: '/s/web2.yaml', specYaml: SPEC });
    expect(kept.agentsMd).toBe('# Agents');
    const cleared = await t.state.environments.upsert({
      name: 'web', specPath: '/s/web2.yaml', specYaml: SPEC, agentsMd: null,
    });
    expect(cleared.agentsMd).toBeNull();

    expect((await t.state.environments.list()).map((e) => e.name)).toEqual(['api', 'web']);
    expect(await t.state.environments.get('web')).toEqual(cleared);
    expect(await t.state.environments.get('nope')).toBeUndefined();
  });

  it('sets the current snapshot with its inputs, and removes', async () => {
    await t.state.environments.upsert({ name: 'web', specPath: '/s/web.yaml', specYaml: SPEC });
    const inputs = { commit: 'abc123', lockfiles: { 'package-lock.json': 'sha256:00' }, tier: 'small' };
    const env = await t.state.environments.setCurrentSnapshot('web', 'snap-1', {
      lastInputs: inputs, agentsMd: 'hello',
    });
    expect(env).toMatchObject({ currentSnapshotId: 'snap-1', lastInputs: inputs, agentsMd: 'hello' });

    const next = await t.state.environments.setCurrentSnapshot('web', 'snap-2');
    expect(next).toMatchObject({ currentSnapshotId: 'snap-2', lastInputs: inputs, agentsMd: 'hello' });

    await expect(t.state.environments.setCurrentSnapshot('nope', 'snap-1')).rejects.toThrow(NotFoundError);
    expect(await t.state.environments.remove('web')).toBe(true);
    expect(await t.state.environments.remove('web')).toBe(false);
    expect(await t.state.environments.get('web')).toBeUndefined();
  });
});

describe('pools', () => {
  it('sets, gets, lists and removes; follows its environment', async () => {
    await t.state.environments.upsert({ name: 'web', specPath: '/s/web.yaml', specYaml: SPEC });
    await t.state.environments.upsert({ name: 'api', specPath: '/s/api.yaml', specYaml: SPEC });

    expect(await t.state.pools.set('web', 2)).toMatchObject({ envName: 'web', targetSize: 2 });
    t.clockMs += 5;
    expect(await t.state.pools.set('web', 3)).toMatchObject({ targetSize: 3, updatedAt: new Date(t.clockMs) });
    await t.state.pools.set('api', 0);
    expect((await t.state.pools.list()).map((p) => [p.envName, p.targetSize])).toEqual([['api', 0], ['web', 3]]);
    expect(await t.state.pools.get('web')).toMatchObject({ targetSize: 3 });

    await expect(t.state.pools.set('web', -1)).rejects.toThrow(InputError);
    await expect(t.state.pools.set('web', 1.5)).rejects.toThrow(InputError);
    await expect(t.state.pools.set('ghost', 1)).rejects.toThrow(NotFoundError);

    expect(await t.state.pools.remove('api')).toBe(true);
    expect(await t.state.pools.remove('api')).toBe(false);
    await t.state.environments.remove('web');
    expect(await t.state.pools.get('web')).toBeUndefined();
  });
});
