import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { dirname } from 'node:path';
import { isAlive, selfRecord } from '../engine/proc.js';

/**
 * A role one live process holds at a time (keeping the pools, serving a PREWARM_HOME), named
 * in a file that records the holder: created with O_EXCL, taken over when its holder is gone.
 */
export interface Holder {
  pid: number;
  startTime: string;
  startedAt: string;
}

/** The live holder of `path`, or null (no file, unreadable, or its process is gone). */
export async function readHolder<T extends Holder>(path: string): Promise<T | null> {
  try {
    const holder = JSON.parse(await readFile(path, 'utf8')) as T;
    return isAlive(holder.pid, holder.startTime) ? holder : null;
  } catch {
    return null;
  }
}

/**
 * Take the role for this process, recording `extra` with it; `busy(other)` makes the error
 * thrown when a live process holds it. Returns the release, which removes the file only
 * while it is still this process's.
 */
export async function claimHolder<T extends Holder>(
  path: string, extra: Omit<T, keyof Holder>, busy: (other: T | null) => Error,
): Promise<() => Promise<void>> {
  const me = { ...selfRecord(), startedAt: new Date().toISOString(), ...extra } as T;
  await mkdir(dirname(path), { recursive: true });
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      await writeFile(path, JSON.stringify(me), { flag: 'wx' });
      return async () => {
        const current = await readHolder<T>(path);
        if (current?.pid === me.pid && current.startTime === me.startTime) await rm(path, { force: true });
      };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
    const other = await readHolder<T>(path);
    if (other) throw busy(other);
    // Left by a process that died: take its place.
    await rm(path, { force: true });
  }
  throw busy(null);
}
