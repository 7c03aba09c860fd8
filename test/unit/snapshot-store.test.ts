import { randomBytes } from 'node:crypto';
import { open, mkdir, mkdtemp, readFile, rm, stat, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it, vi } from 'vitest';
import { SNAPSHOT_FILES } from '../../src/engine/snapshot-format.js';
import { NotFoundError, PrewarmError, SnapshotError } from '../../src/util/errors.js';
import { sha256File } from '../../src/util/hash.js';
import { setLogLevel } from '../../src/util/log.js';

// Count real hashes, to show that a repeated materialize skips them.
vi.mock('../../src/util/hash.js', async (importOriginal) => {
  const original = await importOriginal<typeof import('../../src/util/hash.js')>();
  return { ...original, sha256File: vi.fn(original.sha256File) };
});

const { SnapshotStore } = await import('../../src/snapshot/store.js');
const { verifyEngineSnapshotDir } = await import('../../src/snapshot/hash-cache.js');
const { readBackingFile } = await import('../../src/snapshot/qcow2.js');

const MEMORY_BYTES = 64 << 20;
const hashed = vi.mocked(sha256File);

let work: string; // base image and engine snapshot dirs, shared by the tests
let basePath: string;
let engineDir: string;
let home: string; // a fresh store per test
let store: InstanceType<typeof SnapshotStore>;

/** An engine snapshot dir: sparse memory with random islands, device state, a qcow2 overlay. */
async function makeEngineDir(dir: string, backing: 'relative' | 'absolute'): Promise<void> {
  await mkdir(dir, { recursive: true });
  const memory = await open(join(dir, 'memory.raw'), 'w');
  await memory.truncate(MEMORY_BYTES);
  for (const offset of [0, 4096, 1 << 20, 33 << 20, MEMORY_BYTES - 8192]) {
    await memory.write(randomBytes(4096), 0, 4096, offset);
  }
  await memory.close();
  await writeFile(join(dir, 'state.bin'), randomBytes(40_000));

  // A relative backing name ("base.qcow2" next to the overlay) is what materialize must fix.
  const backingArg = backing === 'relative' ? 'base.qcow2' : basePath;
  if (backing === 'relative') {
    await execa('cp', ['--sparse=always', basePath, join(dir, 'base.qcow2')]);
  }
  const create = ['create', '-q', '-f', 'qcow2', '-b', backingArg, '-F', 'qcow2', 'disk.qcow2'];
  await execa('qemu-img', create, { cwd: dir });

  const files = Object.fromEntries(
    await Promise.all(
      SNAPSHOT_FILES.map(async (name) => {
        const path = join(dir, name);
        return [name, { sizeBytes: (await stat(path)).size, sha256: await sha256File(path) }];
      }),
    ),
  );
  const manifest = {
    formatVersion: 1,
    engine: { name: 'qemu', version: '7.2.0' },
    createdAt: new Date().toISOString(),
    sourceVmId: 'vm-test',
    shape: { memoryMiB: 64, vcpus: 1, diskSizeBytes: 64 << 20 },
    accel: 'tcg',
    baseImage: { digest: 'sha256:test', diskPath: basePath },
    files,
  };
  await writeFile(join(dir, 'snapshot.json'), JSON.stringify(manifest, null, 2));
}

const meta = (envName = 'demo') => ({
  envName,
  cacheKey: `key-${envName}`,
  inputs: { commit: 'abc123', lockfiles: { 'package-lock.json': 'sha256:1' } },
  agentsMd: '# Agents\n',
});

async function errorOf(promise: Promise<unknown>): Promise<PrewarmError> {
  const err = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(PrewarmError);
  return err as PrewarmError;
}

// Buffer.equals, not toEqual: deep equality walks 64 MiB one element at a time.
async function sameBytes(a: string, b: string): Promise<boolean> {
  return (await readFile(a)).equals(await readFile(b));
}

async function flipByte(path: string, offset: number): Promise<void> {
  const handle = await open(path, 'r+');
  const byte = Buffer.alloc(1);
  await handle.read(byte, 0, 1, offset);
  byte[0] ^= 0xff;
  await handle.write(byte, 0, 1, offset);
  await handle.close();
}

beforeAll(async () => {
  setLogLevel('silent');
  work = await mkdtemp(join(tmpdir(), 'prewarm-snapstore-'));
  basePath = join(work, 'image', 'base.qcow2');
  await mkdir(join(work, 'image'));
  await execa('qemu-img', ['create', '-q', '-f', 'qcow2', basePath, '64M']);
  engineDir = join(work, 'engine');
  await makeEngineDir(engineDir, 'relative');
});
afterAll(async () => {
  await rm(work, { recursive: true, force: true });
});

beforeEach(async () => {
  home = await mkdtemp(join(work, 'home-'));
  store = await SnapshotStore.open(join(home, 'snapshots'), join(home, 'cache', 'snapshots'));
  hashed.mockClear();
});
afterEach(async () => {
  await rm(home, { recursive: true, force: true });
});

describe('SnapshotStore', () => {
  it('round-trips put, list, get and materialize', async () => {
    const put = await store.put(engineDir, meta());
    expect(put.id).toMatch(/^snap-[0-9a-f]{12}$/);
    expect(put.rawSizeBytes).toBeGreaterThan(MEMORY_BYTES);
    expect(put.compressedSizeBytes).toBeLessThan(1 << 20);
    expect(put.compressMs).toBeGreaterThan(0);
    expect(put.manifest.inputs).toEqual(meta().inputs);
    expect(put.manifest.agentsMd).toBe('# Agents\n');

    expect((await store.list()).map((s) => s.id)).toEqual([put.id]);
    expect(await store.get(put.id)).toMatchObject({ id: put.id, envName: 'demo', valid: true });

    const dir = await store.materialize(put.id);
    expect(dir).toBe(join(home, 'cache', 'snapshots', put.id));
    for (const name of ['memory.raw', 'state.bin']) {
      expect(await sameBytes(join(dir, name), join(engineDir, name))).toBe(true);
    }
    const memory = await stat(join(dir, 'memory.raw'));
    expect(memory.blocks * 512).toBeLessThan(4 << 20); // still sparse

    // The overlay now names the base image by its path on this host...
    expect(await readBackingFile(join(engineDir, 'disk.qcow2'))).toBe('base.qcow2');
    expect(await readBackingFile(join(dir, 'disk.qcow2'))).toBe(basePath);
    expect(JSON.parse(await readFile(join(dir, '.rebased'), 'utf8'))).toMatchObject({
      backingPath: basePath,
      rawSha256: put.manifest.files['disk.qcow2'].raw.sha256,
    });
    // ...and the local snapshot.json vouches for the local files, so a restore can check them.
    const local = await verifyEngineSnapshotDir(dir);
    expect(local.files['memory.raw']).toEqual(put.manifest.engine.files['memory.raw']);
    await execa('qemu-img', ['check', join(dir, 'disk.qcow2')]);
  });

  it('keeps a disk whose backing path is already right byte-identical', async () => {
    const absDir = join(home, 'engine-abs');
    await makeEngineDir(absDir, 'absolute');
    const { id } = await store.put(absDir, meta());
    const dir = await store.materialize(id);
    expect(await sameBytes(join(dir, 'disk.qcow2'), join(absDir, 'disk.qcow2'))).toBe(true);
    await expect(stat(join(dir, '.rebased'))).rejects.toThrow(/ENOENT/);
  });

  it('skips hashing and decompression when materializing again', async () => {
    const { id } = await store.put(engineDir, meta());
    const dir = await store.materialize(id);
    const storeCache = join(store.rootDir, id, '.verified.json');
    const before = {
      store: await readFile(storeCache, 'utf8'),
      cache: await readFile(join(dir, '.verified.json'), 'utf8'),
      memoryIno: (await stat(join(dir, 'memory.raw'))).ino,
    };
    hashed.mockClear();

    expect(await store.materialize(id)).toBe(dir);
    expect(hashed).not.toHaveBeenCalled();
    expect(await readFile(storeCache, 'utf8')).toBe(before.store);
    expect(await readFile(join(dir, '.verified.json'), 'utf8')).toBe(before.cache);
    expect((await stat(join(dir, 'memory.raw'))).ino).toBe(before.memoryIno);
  });

  it('marks a snapshot with a flipped byte invalid, naming the file', async () => {
    const { id } = await store.put(engineDir, meta());
    const damaged = join(home, 'snapshots', id, 'memory.raw.zst');
    await flipByte(damaged, 100);

    const err = await errorOf(store.materialize(id));
    expect(err.code).toBe('SNAPSHOT_CORRUPT');
    expect(err.message).toContain(damaged);
    expect(err.message).toContain(`prewarm snapshot rm ${id}`);

    const listed = await store.list();
    expect(listed[0]).toMatchObject({ id, valid: false });
    expect(listed[0].invalidReason).toContain('memory.raw.zst');
    expect((await errorOf(store.materialize(id))).code).toBe('SNAPSHOT_INVALID');
  });

  it('refuses a truncated file without hashing it and marks the snapshot invalid', async () => {
    const { id } = await store.put(engineDir, meta());
    const damaged = join(home, 'snapshots', id, 'state.bin.zst');
    const { size } = await stat(damaged);
    await truncate(damaged, size - 1);
    hashed.mockClear();

    const err = await errorOf(store.materialize(id));
    expect(err.code).toBe('SNAPSHOT_TRUNCATED');
    expect(err.message).toContain(damaged);
    expect(err.message).toContain(`${size - 1} bytes`);
    expect(err.message).toContain(String(size));
    expect(hashed.mock.calls.map(([path]) => path)).not.toContain(damaged);
    expect((await store.get(id)).valid).toBe(false);
  });

  it('reports a missing store file without marking the snapshot', async () => {
    const { id } = await store.put(engineDir, meta());
    const missing = join(home, 'snapshots', id, 'disk.qcow2.zst');
    await rm(missing);
    const err = await errorOf(store.materialize(id));
    expect(err.code).toBe('SNAPSHOT_MISSING_FILE');
    expect(err.message).toContain(missing);
    expect((await store.get(id)).valid).toBe(true);
  });

  it('refuses to store an engine dir with a missing file, leaving nothing behind', async () => {
    const broken = join(home, 'engine-broken');
    await makeEngineDir(broken, 'absolute');
    await rm(join(broken, 'state.bin'));
    const err = await errorOf(store.put(broken, meta()));
    expect(err.code).toBe('SNAPSHOT_MISSING_FILE');
    expect(err.message).toContain(join(broken, 'state.bin'));
    expect(await store.list()).toEqual([]);
    expect(await store.reapIncomplete()).toEqual([]);
  });

  it('replaces a damaged local copy without touching the stored snapshot', async () => {
    const { id } = await store.put(engineDir, meta());
    const dir = await store.materialize(id);
    await flipByte(join(dir, 'state.bin'), 10);
    await rm(join(dir, 'disk.qcow2'));

    expect(await store.materialize(id)).toBe(dir);
    expect(await sameBytes(join(dir, 'state.bin'), join(engineDir, 'state.bin'))).toBe(true);
    expect(await readBackingFile(join(dir, 'disk.qcow2'))).toBe(basePath);
    expect((await store.get(id)).valid).toBe(true);
  });

  it('materializes the same snapshot twice at once', async () => {
    const { id } = await store.put(engineDir, meta());
    const [a, b] = await Promise.all([store.materialize(id), store.materialize(id)]);
    expect(a).toBe(b);
    await verifyEngineSnapshotDir(a);
    expect(await store.reapIncomplete()).toEqual([]);
  });

  it('hides an interrupted put and reaps it', async () => {
    const { id } = await store.put(engineDir, meta());
    const orphan = join(home, 'snapshots', '.tmp-snap-aaaaaaaaaaaa-0badf00d');
    await mkdir(orphan);
    await writeFile(join(orphan, 'memory.raw.zst'), 'partial');
    const live = join(home, 'snapshots', `.tmp-snap-bbbbbbbbbbbb-${process.pid}-0badf00d`);
    await mkdir(live);

    expect((await store.list()).map((s) => s.id)).toEqual([id]);
    await expect(store.get('snap-aaaaaaaaaaaa')).rejects.toBeInstanceOf(NotFoundError);
    expect(await store.reapIncomplete()).toEqual([orphan]);
    await expect(stat(orphan)).rejects.toThrow(/ENOENT/);
    expect((await stat(live)).isDirectory()).toBe(true); // its owner (this process) is alive

    await rm(live, { recursive: true });
    await mkdir(orphan);
    await SnapshotStore.open(store.rootDir, store.cacheDir);
    await expect(stat(orphan)).rejects.toThrow(/ENOENT/);
  });

  it('gets, removes and validates ids', async () => {
    const err = await errorOf(store.get('snap-000000000000'));
    expect(err).toBeInstanceOf(NotFoundError);
    expect(err.message).toContain('prewarm snapshot ls');
    expect((await errorOf(store.remove('../../etc'))).code).toBe('BAD_INPUT');

    const { id } = await store.put(engineDir, meta());
    await store.materialize(id);
    expect(await store.remove(id)).toBe(true);
    expect(await store.remove(id)).toBe(false);
    await expect(stat(join(store.cacheDir, id))).rejects.toThrow(/ENOENT/);
    expect(await store.list()).toEqual([]);
  });

  it('gc keeps the newest N valid snapshots per env and drops orphaned cache dirs', async () => {
    const a = [];
    for (let i = 0; i < 3; i++) a.push((await store.put(engineDir, meta('a'))).id);
    const b = [(await store.put(engineDir, meta('b'))).id];
    b.push((await store.put(engineDir, meta('b'))).id);
    await flipByte(join(store.rootDir, b[1], 'state.bin.zst'), 20);
    await errorOf(store.materialize(b[1])); // newest of b is now invalid
    await mkdir(join(store.cacheDir, 'snap-0123456789ab'));

    expect((await store.list({ envName: 'a' })).map((s) => s.id)).toEqual([...a].reverse());
    const result = await store.gc({ keepPerEnv: 1 });
    expect(result.removedIds.sort()).toEqual([a[0], a[1], b[1]].sort());
    expect(result.orphanedCacheIds).toEqual(['snap-0123456789ab']);
    expect((await store.list()).map((s) => s.id).sort()).toEqual([a[2], b[0]].sort());
  });

  it('does not mark a snapshot invalid on a host fault', async () => {
    const { id } = await store.put(engineDir, meta());
    // A file where the cache directory should be: every write under it fails with ENOTDIR.
    await rm(store.cacheDir, { recursive: true });
    await writeFile(store.cacheDir, 'in the way');

    const err = await errorOf(store.materialize(id));
    expect(err.code).toBe('HOST_IO');
    expect(err.message).toContain(id);
    expect(err.message).toMatch(/ENOTDIR|ENOENT|EEXIST/);
    expect((await store.get(id)).valid).toBe(true);

    // The same with the snapshot's own cache dir being a file.
    await rm(store.cacheDir);
    await mkdir(store.cacheDir);
    await writeFile(join(store.cacheDir, id), 'in the way');
    expect((await errorOf(store.materialize(id))).code).toBe('HOST_IO');
    expect((await store.get(id)).valid).toBe(true);

    await rm(join(store.cacheDir, id));
    await store.materialize(id);
  });

  it('does not mark a snapshot invalid when zstd is missing', async () => {
    const { id } = await store.put(engineDir, meta());
    const path = process.env.PATH;
    process.env.PATH = '/nonexistent';
    try {
      const err = await errorOf(store.materialize(id));
      expect(err.code).toBe('HOST_SETUP');
      expect(err.message).toContain('scripts/setup.sh');
    } finally {
      process.env.PATH = path;
    }
    expect((await store.get(id)).valid).toBe(true);
    await store.materialize(id);
  });
});
