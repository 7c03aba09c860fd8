import { mkdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { dirname } from 'node:path';
import { isAlive, selfRecord } from '../engine/proc.js';
import { PrewarmError } from '../util/errors.js';

/** A lock is held for milliseconds (read the VMs, write one file); older means its holder
 * is stuck, and a lock whose holder has exited is free at once. */
const STALE_LOCK_MS = 30_000;
const RETRY_MS = 10;

const inProcess = new Map<string, Promise<unknown>>();

/**
 * Run `fn` holding an exclusive lock shared by every prewarm process: a file created with
 * O_EXCL that records its holder. Calls in one process queue up behind each other first, so
 * they never spin against themselves.
 */
export async function withFileLock<T>(path: string, fn: () => Promise<T>, timeoutMs = 60_000): Promise<T> {
  const previous = inProcess.get(path) ?? Promise.resolve();
  const run = previous.catch(() => {}).then(() => lockedRun(path, fn, timeoutMs));
  inProcess.set(path, run);
  try {
    return await run;
  } finally {
    if (inProcess.get(path) === run) inProcess.delete(path);
  }
}

async function lockedRun<T>(path: string, fn: () => Promise<T>, timeoutMs: number): Promise<T> {
  await mkdir(dirname(path), { recursive: true });
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      await writeFile(path, JSON.stringify(selfRecord()), { flag: 'wx' });
      break;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
    if (await isStale(path)) {
      await rm(path, { force: true });
      continue;
    }
    if (Date.now() > deadline) {
      throw new PrewarmError('LOCK_TIMEOUT', `could not take the lock ${path} within ${timeoutMs} ms; ` +
        'if no prewarm process is running, remove the file');
    }
    await new Promise((r) => setTimeout(r, RETRY_MS));
  }
  try {
    return await fn();
  } finally {
    await rm(path, { force: true });
  }
}

async function isStale(path: string): Promise<boolean> {
  try {
    const [text, info] = await Promise.all([readFile(path, 'utf8'), stat(path)]);
    if (Date.now() - info.mtimeMs > STALE_LOCK_MS) return true;
    const holder = JSON.parse(text) as { pid: number; startTime: string };
    return !isAlive(holder.pid, holder.startTime);
  } catch {
    // Half-written (the holder is between create and write) or just released: not stale.
    return false;
  }
}
