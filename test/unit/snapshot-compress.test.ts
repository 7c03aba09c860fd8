import { randomBytes } from 'node:crypto';
import { mkdtemp, open, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { compressFile, decompressFile } from '../../src/snapshot/compress.js';
import { HostSetupError, PrewarmError } from '../../src/util/errors.js';

let dir: string;

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'prewarm-compress-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function sparseFile(path: string, sizeBytes: number): Promise<void> {
  const handle = await open(path, 'w');
  await handle.truncate(sizeBytes);
  await handle.write(randomBytes(8192), 0, 8192, sizeBytes / 2);
  await handle.close();
}

describe('compress', () => {
  it('round-trips a mostly-zero file and keeps it sparse', async () => {
    const src = join(dir, 'memory.raw');
    await sparseFile(src, 32 << 20);
    await compressFile(src, join(dir, 'memory.raw.zst'));
    expect((await stat(join(dir, 'memory.raw.zst'))).size).toBeLessThan(64 << 10);

    await decompressFile(join(dir, 'memory.raw.zst'), join(dir, 'sparse'), { sparse: true });
    await decompressFile(join(dir, 'memory.raw.zst'), join(dir, 'dense'), { sparse: false });
    const original = await readFile(src);
    expect(original.equals(await readFile(join(dir, 'sparse')))).toBe(true);
    expect(original.equals(await readFile(join(dir, 'dense')))).toBe(true);
    expect((await stat(join(dir, 'sparse'))).blocks * 512).toBeLessThan(1 << 20);
    expect((await stat(join(dir, 'dense'))).blocks * 512).toBeGreaterThanOrEqual(32 << 20);
  });

  it('says what failed when zstd fails', async () => {
    await writeFile(join(dir, 'junk.zst'), 'not zstd');
    const err = (await decompressFile(join(dir, 'junk.zst'), join(dir, 'out')).then(
      () => undefined,
      (e: unknown) => e,
    )) as PrewarmError;
    expect(err).toBeInstanceOf(PrewarmError);
    expect(err.code).toBe('ZSTD_FAILED');
    expect(err.message).toContain(join(dir, 'junk.zst'));
  });

  it('names the setup script when zstd is missing', async () => {
    const path = process.env.PATH;
    process.env.PATH = '/nonexistent';
    try {
      const err = await compressFile(join(dir, 'a'), join(dir, 'b')).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(HostSetupError);
      expect((err as Error).message).toContain('scripts/setup.sh');
    } finally {
      process.env.PATH = path;
    }
  });
});
