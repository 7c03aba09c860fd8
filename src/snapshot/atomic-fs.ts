import { isAlive } from '../engine/proc.js';
import { randomBytes } from 'node:crypto';
import { open, readdir, rename, rm, writeFile } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';

/**
 * Filesystem steps the store builds on: temporary names that say who owns them, atomic JSON
 * writes, fsync, and removal that hides a tree before deleting it.
 *
 * Every temporary file or directory is named `.tmp-<label>-<pid>-<hex>`, in the directory
 * where its final name will be, so a rename publishes it atomically. The pid lets a reaper
 * tell the leftovers of a dead process from the work of a live one.
 */
const TMP_PREFIX = '.tmp-';
const TMP_OWNER = /-(\d+)-[0-9a-f]{8}$/;

export function tmpName(label: string): string {
  return `${TMP_PREFIX}${label}-${process.pid}-${randomBytes(4).toString('hex')}`;
}

export function isTmpName(name: string): boolean {
  return name.startsWith(TMP_PREFIX);
}

/** True when a temporary entry may be deleted: no owner recorded, or its owner has exited. */
export function isAbandonedTmp(name: string): boolean {
  if (!isTmpName(name)) return false;
  const match = TMP_OWNER.exec(name);
  if (!match) return true;
  return !isAlive(Number(match[1]));
}

/** Delete the abandoned temporary entries directly inside `dir`; returns their paths. */
export async function reapTmp(dir: string): Promise<string[]> {
  let names: string[];
  try {
    names = await readdir(dir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw err;
  }

  const reaped: string[] = [];
  for (const name of names.filter(isAbandonedTmp)) {
    await rm(join(dir, name), { recursive: true, force: true });
    reaped.push(join(dir, name));
  }
  return reaped;
}

/** fsync a file or a directory (Linux allows opening directories read-only for this). */
export async function fsyncPath(path: string): Promise<void> {
  const handle = await open(path, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** Write JSON through a temporary file and a rename: readers see the old or the new file. */
export async function writeJsonAtomic(
  path: string,
  value: unknown,
  opts: { fsync?: boolean } = {},
): Promise<void> {
  const tmp = join(dirname(path), tmpName(basename(path)));
  try {
    await writeFile(tmp, `${JSON.stringify(value, null, 2)}\n`);
    if (opts.fsync) await fsyncPath(tmp);
    await rename(tmp, path);
  } catch (err) {
    await rm(tmp, { force: true }).catch(() => undefined);
    throw err;
  }
}

/**
 * Remove a tree so that it vanishes at once: rename it to a temporary sibling, then delete.
 * If the delete is interrupted, what is left is an abandoned `.tmp-*` entry for the reaper.
 * Returns false when there was nothing to remove.
 */
export async function removeTree(path: string): Promise<boolean> {
  const hidden = join(dirname(path), tmpName(`rm-${basename(path)}`));
  try {
    await rename(path, hidden);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw err;
  }
  await rm(hidden, { recursive: true, force: true });
  return true;
}

/** Wait for every promise (so no work runs on after a failure), then throw the first error. */
export async function settleAll<T>(promises: Promise<T>[]): Promise<T[]> {
  const results = await Promise.allSettled(promises);
  const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failed) throw failed.reason;
  return results.map((r) => (r as PromiseFulfilledResult<T>).value);
}
