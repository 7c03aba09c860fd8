import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rename, rm, truncate, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { SnapshotError } from '../../src/util/errors.js';
import { sha256, sha256File } from '../../src/util/hash.js';

// Count real hashes: the cache's whole point is to skip them.
vi.mock('../../src/util/hash.js', async (importOriginal) => {
  const original = await importOriginal<typeof import('../../src/util/hash.js')>();
  return { ...original, sha256File: vi.fn(original.sha256File) };
});

const { HASH_CACHE_FILE, digestFile, verifyEngineSnapshotDir, verifyFile } = await import(
  '../../src/snapshot/hash-cache.js'
);

let dir: string;
const hashed = vi.mocked(sha256File);

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'prewarm-hash-cache-'));
  hashed.mockClear();
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function fixture(name: string, sizeBytes = 4096) {
  const data = randomBytes(sizeBytes);
  const path = join(dir, name);
  await writeFile(path, data);
  return { path, data, digest: { sizeBytes, sha256: sha256(data) } };
}

async function caught<E = SnapshotError>(promise: Promise<unknown>): Promise<E> {
  try {
    await promise;
  } catch (err) {
    return err as E;
  }
  throw new Error('expected a rejection');
}

async function codeOf(promise: Promise<unknown>): Promise<string> {
  const err = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(SnapshotError);
  return (err as SnapshotError).code;
}

describe('verifyFile', () => {
  it('hashes once, then trusts the cache while the file is unchanged', async () => {
    const { path, digest } = await fixture('memory.raw');
    await verifyFile(path, digest);
    expect(hashed).toHaveBeenCalledTimes(1);
    const cache = JSON.parse(await readFile(join(dir, HASH_CACHE_FILE), 'utf8'));
    expect(Object.values(cache.entries)).toMatchObject([{ sha256: digest.sha256 }]);

    await verifyFile(path, digest);
    expect(hashed).toHaveBeenCalledTimes(1);
  });

  it('keeps a file verified across a rename within its directory', async () => {
    const { path, digest } = await fixture('.tmp-state.bin');
    await verifyFile(path, digest);
    await rename(path, join(dir, 'state.bin'));
    await verifyFile(join(dir, 'state.bin'), digest);
    expect(hashed).toHaveBeenCalledTimes(1);
  });

  it('rehashes a changed file and reports it corrupt, naming it', async () => {
    const { path, data, digest } = await fixture('disk.qcow2');
    await verifyFile(path, digest);
    data[100] ^= 0xff;
    await writeFile(path, data);

    const err = await caught(verifyFile(path, digest));
    expect(err.code).toBe('SNAPSHOT_CORRUPT');
    expect(err.message).toContain(path);
    expect(err.message).toContain('prewarm env prepare');
    expect(hashed).toHaveBeenCalledTimes(2);
  });

  it('sees a change that restored the old mtime only with force', async () => {
    const { path, data, digest } = await fixture('memory.raw');
    await verifyFile(path, digest);
    const old = new Date(Date.now() - 10_000);
    await utimes(path, old, old);
    await verifyFile(path, digest);
    data[0] ^= 1;
    await writeFile(path, data);
    await utimes(path, old, old);

    await verifyFile(path, digest); // the documented blind spot of the cached path
    expect(await codeOf(verifyFile(path, digest, { force: true }))).toBe('SNAPSHOT_CORRUPT');
  });

  it('refuses a wrong size without hashing, giving both sizes', async () => {
    const { path, digest } = await fixture('state.bin');
    await truncate(path, 1000);
    const err = await caught(verifyFile(path, digest));
    expect(err.code).toBe('SNAPSHOT_TRUNCATED');
    expect(err.message).toContain('1000 bytes');
    expect(err.message).toContain(String(digest.sizeBytes));
    expect(hashed).not.toHaveBeenCalled();
  });

  it('reports a missing file', async () => {
    const path = join(dir, 'nope');
    const err = await caught(verifyFile(path, { sizeBytes: 1, sha256: 'a'.repeat(64) }));
    expect(err.code).toBe('SNAPSHOT_MISSING_FILE');
    expect(err.message).toContain(path);
  });

  it('passes host errors through unchanged', async () => {
    const { path } = await fixture('file');
    const child = join(path, 'child');
    const err = await caught<NodeJS.ErrnoException>(
      verifyFile(child, { sizeBytes: 1, sha256: '0'.repeat(64) }),
    );
    expect(err).not.toBeInstanceOf(SnapshotError);
    expect(err.code).toBe('ENOTDIR');
  });

  it('digestFile seeds the cache', async () => {
    const { path, digest } = await fixture('x');
    expect(await digestFile(path)).toEqual(digest);
    await verifyFile(path, digest);
    expect(hashed).toHaveBeenCalledTimes(1);
  });
});

describe('verifyEngineSnapshotDir', () => {
  async function engineDir() {
    const files = {
      'memory.raw': (await fixture('memory.raw', 8192)).digest,
      'state.bin': (await fixture('state.bin', 512)).digest,
      'disk.qcow2': (await fixture('disk.qcow2', 1024)).digest,
    };
    const manifest = {
      formatVersion: 1,
      engine: { name: 'qemu', version: '7.2' },
      createdAt: new Date().toISOString(),
      sourceVmId: 'vm-1',
      shape: { memoryMiB: 64, vcpus: 1, diskSizeBytes: 1 << 26 },
      accel: 'tcg',
      baseImage: { digest: 'img', diskPath: '/base.qcow2' },
      files,
    };
    await writeFile(join(dir, 'snapshot.json'), JSON.stringify(manifest));
    return manifest;
  }

  it('returns the manifest of a good directory', async () => {
    const manifest = await engineDir();
    expect(await verifyEngineSnapshotDir(dir)).toEqual(manifest);
  });

  it('names the manifest when it is missing, not JSON, or has a bad field', async () => {
    const manifestPath = join(dir, 'snapshot.json');
    let err = await caught(verifyEngineSnapshotDir(dir));
    expect([err.code, err.message.includes(manifestPath)]).toEqual(['SNAPSHOT_MISSING_FILE', true]);

    await writeFile(manifestPath, '{ nope');
    err = await caught(verifyEngineSnapshotDir(dir));
    expect([err.code, err.message.includes(manifestPath)]).toEqual(['SNAPSHOT_BAD_MANIFEST', true]);

    const manifest = await engineDir();
    await writeFile(
      manifestPath,
      JSON.stringify({ ...manifest, files: { ...manifest.files, 'state.bin': { sizeBytes: -1 } } }),
    );
    err = await caught(verifyEngineSnapshotDir(dir));
    expect(err.code).toBe('SNAPSHOT_BAD_MANIFEST');
    expect(err.message).toContain('files.state.bin.sizeBytes');
  });

  it('checks every size before hashing anything', async () => {
    await engineDir();
    await truncate(join(dir, 'disk.qcow2'), 10);
    expect(await codeOf(verifyEngineSnapshotDir(dir))).toBe('SNAPSHOT_TRUNCATED');
    expect(hashed).not.toHaveBeenCalled();
  });
});
