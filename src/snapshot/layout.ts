import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import type { SnapshotFileName } from '../engine/snapshot-format.js';
import { errorMessage, InputError, SnapshotError } from '../util/errors.js';
import { writeJsonAtomic } from './atomic-fs.js';
import {
  INVALID_MARKER,
  invalidMarkerSchema,
  readJsonFile,
  SNAPSHOT_ID_PATTERN,
  STORE_MANIFEST,
  storeManifestSchema,
  type InvalidMarker,
  type StoreManifest,
} from './manifest.js';

/**
 * Where a stored snapshot lives, and what the store says about it.
 *
 *   ROOT/<id>/            manifest.json (written last), memory.raw.zst, state.bin.zst,
 *                         disk.qcow2.zst, .verified.json (hash cache), invalid.json (if bad)
 *   CACHE/<id>/           snapshot.json, memory.raw, state.bin, disk.qcow2, .rebased
 *   ROOT/.tmp-*, CACHE/.tmp-*, CACHE/<id>/.tmp-*   unfinished work; never listed, reaped
 */
export interface StoreLayout {
  rootDir: string;
  cacheDir: string;
}

export interface StoredSnapshot {
  id: string;
  envName: string;
  cacheKey: string;
  createdAt: string;
  /** ROOT/<id>: the compressed files and the manifest. */
  dir: string;
  rawSizeBytes: number;
  compressedSizeBytes: number;
  /** False once a content check failed; `invalidReason` says which and why. */
  valid: boolean;
  invalidReason: string | null;
  manifest: StoreManifest;
}

export function newSnapshotId(): string {
  return `snap-${randomBytes(6).toString('hex')}`;
}

/** Ids become paths that get deleted: anything but `snap-<12 hex>` is refused. */
export function assertSnapshotId(id: string): void {
  if (!SNAPSHOT_ID_PATTERN.test(id)) {
    throw new InputError(`"${id}" is not a snapshot id (expected snap-<12 hex digits>)`);
  }
}

export function storeDir(layout: StoreLayout, id: string): string {
  return join(layout.rootDir, id);
}

export function cacheDirOf(layout: StoreLayout, id: string): string {
  return join(layout.cacheDir, id);
}

export function compressedName(name: SnapshotFileName): `${SnapshotFileName}.zst` {
  return `${name}.zst`;
}

/** What to tell the user when a stored snapshot is damaged. */
export function fixHint(id: string): string {
  return `Remove it with \`prewarm snapshot rm ${id}\` and run \`prewarm env prepare\` again.`;
}

export function isContentError(err: unknown): err is SnapshotError {
  return (
    err instanceof SnapshotError &&
    (err.code === 'SNAPSHOT_TRUNCATED' || err.code === 'SNAPSHOT_CORRUPT')
  );
}

export async function readStored(layout: StoreLayout, id: string): Promise<StoredSnapshot> {
  const dir = storeDir(layout, id);
  const fix = fixHint(id);
  const manifest = await readJsonFile(join(dir, STORE_MANIFEST), storeManifestSchema, fix);
  const invalid = await readInvalidMarker(dir);

  const files = Object.values(manifest.files);
  return {
    id: manifest.id,
    envName: manifest.envName,
    cacheKey: manifest.cacheKey,
    createdAt: manifest.createdAt,
    dir,
    rawSizeBytes: files.reduce((sum, f) => sum + f.raw.sizeBytes, 0),
    compressedSizeBytes: files.reduce((sum, f) => sum + f.compressed.sizeBytes, 0),
    valid: invalid === null,
    invalidReason: invalid?.reason ?? null,
    manifest,
  };
}

async function readInvalidMarker(dir: string): Promise<InvalidMarker | null> {
  try {
    return await readJsonFile(join(dir, INVALID_MARKER), invalidMarkerSchema, '');
  } catch (err) {
    if (err instanceof SnapshotError && err.code === 'SNAPSHOT_MISSING_FILE') return null;
    // A marker that cannot be read still means someone found the snapshot bad.
    return { code: 'SNAPSHOT_INVALID', reason: errorMessage(err), markedAt: '' };
  }
}

/**
 * Record that a content check failed, so the snapshot is never restored again. Only content
 * errors (SNAPSHOT_TRUNCATED, SNAPSHOT_CORRUPT) come here, never host faults. If the marker
 * cannot be written, the content error is still what the caller throws.
 */
export async function markInvalid(dir: string, err: SnapshotError): Promise<void> {
  const marker: InvalidMarker = {
    code: err.code,
    reason: err.message,
    markedAt: new Date().toISOString(),
  };
  await writeJsonAtomic(join(dir, INVALID_MARKER), marker, { fsync: true });
}
