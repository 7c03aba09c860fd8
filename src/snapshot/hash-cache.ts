import { readFile, stat } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  SNAPSHOT_FILES,
  SNAPSHOT_MANIFEST,
  type FileDigest,
} from '../engine/snapshot-format.js';
import { errorMessage, SnapshotError } from '../util/errors.js';
import { sha256File } from '../util/hash.js';
import { logger } from '../util/log.js';
import { settleAll, writeJsonAtomic } from './atomic-fs.js';
import { engineManifestSchema, readJsonFile, type EngineManifest } from './manifest.js';

/**
 * Verifying snapshot files, with a cache of good hashes.
 *
 * A check stats the file first (it exists, its size is right) and refuses a wrong size without
 * hashing. A hash, once computed, is remembered in `.verified.json` in the file's directory,
 * keyed by (dev, ino) and stamped with sizeBytes and mtimeNs; while those are unchanged the
 * next check skips the hash. Keying by inode, not name, keeps a file verified when it is
 * renamed within its directory (the store verifies under a temporary name, then publishes).
 *
 * A write in the same timestamp tick as the hash could leave mtime unchanged ("racy git"), so
 * a file younger than RACY_WINDOW_MS is left to age before it is hashed: every remembered
 * mtime is older than the hash that vouches for it.
 *
 * Shortcoming: a change that keeps size and mtime (utimes, or damage below the filesystem) is
 * not seen on the cached path. `force: true` rehashes; a periodic scrub should use it.
 */
export const HASH_CACHE_FILE = '.verified.json';
const RACY_WINDOW_MS = 50;
const MAX_ENTRIES = 64;

const DEFAULT_FIX =
  'Remove the snapshot that holds it (`prewarm snapshot rm ID`) and run ' +
  '`prewarm env prepare` again.';

interface StatKey {
  inode: string;
  sizeBytes: number;
  mtimeNs: string;
}

interface CacheEntry extends Omit<StatKey, 'inode'> {
  sha256: string;
  verifiedAt: string;
}

type CacheFile = { version: 1; entries: Record<string, CacheEntry> };

const log = logger({ part: 'snapshot', module: 'hash-cache' });

async function statKey(path: string): Promise<StatKey & { isFile: boolean }> {
  const st = await stat(path, { bigint: true });
  return {
    inode: `${st.dev}:${st.ino}`,
    sizeBytes: Number(st.size),
    mtimeNs: String(st.mtimeNs),
    isFile: st.isFile(),
  };
}

function cachePath(path: string): string {
  return join(dirname(path), HASH_CACHE_FILE);
}

async function readCache(file: string): Promise<CacheFile> {
  try {
    const parsed = JSON.parse(await readFile(file, 'utf8')) as CacheFile;
    if (parsed?.version === 1 && typeof parsed.entries === 'object') return parsed;
  } catch {
    // Missing or unreadable: start empty; the cache only ever saves work.
  }
  return { version: 1, entries: {} };
}

// Writers of one cache file queue behind each other in this process. Across processes the
// last rename wins and a lost entry only costs a rehash.
const writeQueues = new Map<string, Promise<void>>();

async function remember(path: string, key: StatKey, sha256: string): Promise<void> {
  const file = cachePath(path);
  const previous = writeQueues.get(file) ?? Promise.resolve();
  const next = previous.then(async () => {
    const cache = await readCache(file);
    cache.entries[key.inode] = {
      sizeBytes: key.sizeBytes,
      mtimeNs: key.mtimeNs,
      sha256,
      verifiedAt: new Date().toISOString(),
    };
    const newest = Object.entries(cache.entries)
      .sort(([, a], [, b]) => b.verifiedAt.localeCompare(a.verifiedAt))
      .slice(0, MAX_ENTRIES);
    await writeJsonAtomic(file, { version: 1, entries: Object.fromEntries(newest) });
  });
  const settled = next.catch((err: unknown) => {
    log.warn({ file, err: errorMessage(err) }, 'could not update the hash cache; continuing');
  });
  writeQueues.set(file, settled);
  await settled;
  if (writeQueues.get(file) === settled) writeQueues.delete(file);
}

async function cachedSha256(path: string, key: StatKey): Promise<string | undefined> {
  const entry = (await readCache(cachePath(path))).entries[key.inode];
  if (entry && entry.sizeBytes === key.sizeBytes && entry.mtimeNs === key.mtimeNs) {
    return entry.sha256;
  }
  return undefined;
}

/** Hash a file and remember the result (unless it changed while it was being read). */
export async function digestFile(path: string): Promise<FileDigest> {
  let before = await statKey(path);
  const ageMs = Date.now() - Number(BigInt(before.mtimeNs) / 1_000_000n);
  if (ageMs < RACY_WINDOW_MS && ageMs >= 0) {
    await sleep(RACY_WINDOW_MS - ageMs + 1);
    before = await statKey(path);
  }

  const hashStartedMs = Date.now();
  const sha256 = await sha256File(path);
  const after = await statKey(path);
  const unchanged =
    before.inode === after.inode &&
    before.mtimeNs === after.mtimeNs &&
    before.sizeBytes === after.sizeBytes;
  const aged = hashStartedMs - Number(BigInt(after.mtimeNs) / 1_000_000n) >= RACY_WINDOW_MS;
  if (unchanged && aged) await remember(path, after, sha256);
  return { sizeBytes: after.sizeBytes, sha256 };
}

/** Stat `path` and check it is a regular file of the expected size; nothing is hashed. */
async function checkSize(path: string, sizeBytes: number, fix: string): Promise<StatKey> {
  let key: Awaited<ReturnType<typeof statKey>>;
  try {
    key = await statKey(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    throw new SnapshotError(`${path} is missing. ${fix}`, { code: 'SNAPSHOT_MISSING_FILE' });
  }

  if (!key.isFile) {
    throw new SnapshotError(`${path} is not a regular file. ${fix}`, {
      code: 'SNAPSHOT_MISSING_FILE',
    });
  }
  if (key.sizeBytes !== sizeBytes) {
    throw new SnapshotError(
      `${path} is ${key.sizeBytes} bytes but the manifest says ${sizeBytes}: ` +
        `it is truncated or was replaced. ${fix}`,
      { code: 'SNAPSHOT_TRUNCATED' },
    );
  }
  return key;
}

/**
 * Check that `path` has the expected size and sha256. Throws SnapshotError with code
 * SNAPSHOT_MISSING_FILE, SNAPSHOT_TRUNCATED (wrong size; nothing is hashed) or
 * SNAPSHOT_CORRUPT; the message names the file and ends with `fix`. Host errors (EACCES,
 * EIO, ENOTDIR) pass through unchanged: they say nothing about the file's content.
 */
export async function verifyFile(
  path: string,
  expected: FileDigest,
  opts: { fix?: string; force?: boolean } = {},
): Promise<void> {
  const fix = opts.fix ?? DEFAULT_FIX;
  const key = await checkSize(path, expected.sizeBytes, fix);
  if (!opts.force && (await cachedSha256(path, key)) === expected.sha256) return;

  const actual = await digestFile(path);
  if (actual.sha256 !== expected.sha256 || actual.sizeBytes !== expected.sizeBytes) {
    throw new SnapshotError(
      `${path} is corrupt: its sha256 is ${actual.sha256}, the manifest says ` +
        `${expected.sha256}. ${fix}`,
      { code: 'SNAPSHOT_CORRUPT' },
    );
  }
}

/**
 * Verify an engine snapshot directory: snapshot.json parses and validates, then every file it
 * lists has its size (all checked before any hash) and its sha256. Returns the manifest.
 */
export async function verifyEngineSnapshotDir(
  dir: string,
  opts: { fix?: string } = {},
): Promise<EngineManifest> {
  const fix =
    opts.fix ?? `${dir} is not a usable engine snapshot; run \`prewarm env prepare\` again.`;
  const manifest = await readJsonFile(join(dir, SNAPSHOT_MANIFEST), engineManifestSchema, fix);

  for (const name of SNAPSHOT_FILES) {
    await checkSize(join(dir, name), manifest.files[name].sizeBytes, fix);
  }
  await settleAll(
    SNAPSHOT_FILES.map((name) => verifyFile(join(dir, name), manifest.files[name], { fix })),
  );
  return manifest;
}
