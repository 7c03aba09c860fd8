import { mkdir, readFile, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { z } from 'zod';
import {
  SNAPSHOT_FILES,
  SNAPSHOT_MANIFEST,
  type FileDigest,
  type SnapshotFileName,
} from '../engine/snapshot-format.js';
import { errorMessage, SnapshotError } from '../util/errors.js';
import { step, type Logger } from '../util/log.js';
import { settleAll, tmpName, writeJsonAtomic } from './atomic-fs.js';
import { decompressFile } from './compress.js';
import { digestFile, verifyFile } from './hash-cache.js';
import { hostFault } from './host-fault.js';
import {
  cacheDirOf,
  compressedName,
  fixHint,
  isContentError,
  markInvalid,
  type StoreLayout,
  type StoredSnapshot,
} from './layout.js';
import { fileDigestSchema, readJsonFile, type StoreManifest } from './manifest.js';
import { readBackingFile, rebaseUnsafe } from './qcow2.js';

/**
 * Turn a stored snapshot into a local engine snapshot directory (CACHE/<id>/) that a restore
 * maps directly:
 *
 *   1. verify-store   the compressed files against the manifest (hash-cached); a truncated or
 *                     corrupt one marks the snapshot invalid
 *   2. check-cache    the local copies that exist against their digests; a damaged local copy
 *                     is derived data and is simply decompressed again
 *   3. decompress     each missing file into a temporary name in CACHE/<id>/ (sparse), verify
 *                     it, fix the disk's backing path, then rename it into place
 *   4. snapshot.json  the engine manifest, with the disk's digest as it is on this host
 *
 * Host faults (ENOSPC, EACCES, a file in the way, zstd missing) are thrown as they are and
 * never mark or delete the snapshot.
 */
export const REBASED_MARKER = '.rebased';

const rebasedMarkerSchema = z.object({
  backingPath: z.string(),
  rawSha256: z.string(),
  digest: fileDigestSchema,
});

const STALE_CODES: string[] = ['SNAPSHOT_MISSING_FILE', 'SNAPSHOT_TRUNCATED', 'SNAPSHOT_CORRUPT'];

export async function materializeSnapshot(
  layout: StoreLayout,
  snap: StoredSnapshot,
  log: Logger,
): Promise<string> {
  if (!snap.valid) {
    // The reason is the failed check's message, which already says what to do.
    throw new SnapshotError(
      `snapshot ${snap.id} is marked invalid and will not be restored: ${snap.invalidReason}`,
      { code: 'SNAPSHOT_INVALID' },
    );
  }
  await step(log, 'verify-store', () => verifyStoreFiles(snap, log));

  const dir = cacheDirOf(layout, snap.id);
  try {
    await mkdir(dir, { recursive: true });
    const stale = await step(log, 'check-cache', () => findStale(dir, snap.manifest, log));
    await step(log, 'decompress', () =>
      settleAll(stale.map((name) => restoreFile(dir, snap, name, log))),
    );
    await step(log, 'snapshot-json', () => writeEngineManifest(dir, snap.manifest));
  } catch (err) {
    throw hostFault(err, `preparing the local copy of snapshot ${snap.id} in ${dir}`);
  }
  return dir;
}

async function verifyStoreFiles(snap: StoredSnapshot, log: Logger): Promise<void> {
  try {
    await settleAll(
      SNAPSHOT_FILES.map((name) =>
        verifyFile(join(snap.dir, compressedName(name)), snap.manifest.files[name].compressed, {
          fix: fixHint(snap.id),
        }),
      ),
    );
  } catch (err) {
    if (isContentError(err)) await markInvalidOrLog(snap, err, log);
    throw hostFault(err, `reading snapshot ${snap.id} in ${snap.dir}`);
  }
}

async function markInvalidOrLog(
  snap: StoredSnapshot,
  err: SnapshotError,
  log: Logger,
): Promise<void> {
  try {
    await markInvalid(snap.dir, err);
    log.warn({ code: err.code }, 'snapshot marked invalid');
  } catch (markErr) {
    log.error({ err: errorMessage(markErr) }, 'could not mark the snapshot invalid');
  }
}

/** The digest a local copy must have: the raw one, or for a rebased disk the one after it. */
async function expectedLocalDigest(
  dir: string,
  manifest: StoreManifest,
  name: SnapshotFileName,
): Promise<FileDigest> {
  const raw = manifest.files[name].raw;
  if (name !== 'disk.qcow2') return raw;

  const marker = await readJsonFile(join(dir, REBASED_MARKER), rebasedMarkerSchema, '').catch(
    () => null,
  );
  const matches =
    marker?.backingPath === manifest.engine.baseImage.diskPath && marker.rawSha256 === raw.sha256;
  return matches ? marker.digest : raw;
}

async function findStale(
  dir: string,
  manifest: StoreManifest,
  log: Logger,
): Promise<SnapshotFileName[]> {
  const checks = SNAPSHOT_FILES.map(async (name) => {
    try {
      await verifyFile(join(dir, name), await expectedLocalDigest(dir, manifest, name));
      return null;
    } catch (err) {
      if (!(err instanceof SnapshotError) || !STALE_CODES.includes(err.code)) throw err;
      if (err.code !== 'SNAPSHOT_MISSING_FILE') {
        log.warn({ file: join(dir, name), code: err.code }, 'local copy damaged; replacing it');
      }
      return name;
    }
  });
  return (await settleAll(checks)).filter((name): name is SnapshotFileName => name !== null);
}

async function restoreFile(
  dir: string,
  snap: StoredSnapshot,
  name: SnapshotFileName,
  log: Logger,
): Promise<void> {
  const source = join(snap.dir, compressedName(name));
  const raw = snap.manifest.files[name].raw;
  const tmp = join(dir, tmpName(name));
  try {
    await decompressFile(source, tmp, { sparse: true });

    try {
      await verifyFile(tmp, raw, { fix: '' });
    } catch (err) {
      if (!isContentError(err)) throw err;
      const bad = new SnapshotError(
        `${source} decompresses to a ${name} that does not match the manifest ` +
          `(${err.message.trim()}). ${fixHint(snap.id)}`,
        { code: err.code },
      );
      await markInvalidOrLog(snap, bad, log);
      throw bad;
    }

    if (name === 'disk.qcow2') await pointAtBaseImage(tmp, dir, snap.manifest);
    await rename(tmp, join(dir, name));
  } finally {
    await rm(tmp, { force: true });
  }
}

/**
 * The overlay names its base image by path, and that path must be right on this host. The raw
 * digest recorded at put time is of the overlay exactly as the engine wrote it, so it is
 * checked (above) before this step and never after. `qemu-img rebase -u` rewrites only the
 * header's backing path, but that changes the file's bytes: its new digest goes into
 * `.rebased`, and later checks of the local copy (and the local snapshot.json) use that one.
 * The marker is written before the disk is renamed into place, so whoever sees the rebased
 * disk also sees the digest that vouches for it.
 */
async function pointAtBaseImage(
  tmp: string,
  dir: string,
  manifest: StoreManifest,
): Promise<void> {
  const diskPath = manifest.engine.baseImage.diskPath;
  const markerPath = join(dir, REBASED_MARKER);
  if ((await readBackingFile(tmp)) === diskPath) {
    await rm(markerPath, { force: true });
    return;
  }

  await rebaseUnsafe(tmp, diskPath);
  const digest = await digestFile(tmp);
  const rawSha256 = manifest.files['disk.qcow2'].raw.sha256;
  await writeJsonAtomic(markerPath, { backingPath: diskPath, rawSha256, digest });
}

/** The engine manifest, with the disk digest of the local copy; rewritten only if different. */
async function writeEngineManifest(dir: string, manifest: StoreManifest): Promise<void> {
  const disk = await expectedLocalDigest(dir, manifest, 'disk.qcow2');
  const local = { ...manifest.engine, files: { ...manifest.engine.files, 'disk.qcow2': disk } };
  const path = join(dir, SNAPSHOT_MANIFEST);
  const current = await readFile(path, 'utf8').catch(() => null);
  if (current === `${JSON.stringify(local, null, 2)}\n`) return;
  await writeJsonAtomic(path, local, { fsync: true });
}
