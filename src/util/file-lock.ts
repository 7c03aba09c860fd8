import { mkdir, readFile, rm, stat, utimes, writeFile } from 'node:fs/promises';
import { dirname } from 'node:path';
import { isAlive, selfRecord } from '../engine/proc.js';
import { PrewarmError } from './errors.js';

/** A holder touches its lock file this often; a file untouched for STALE_LOCK_MS has a
 * stuck holder, and a lock whose holder has exited is free at once. */
const HEARTBEAT_MS = 10_000;
const STALE_LOCK_MS = 30_000;

export interface FileLockOptions {
  /** Give up (LOCK_TIMEOUT) after waiting this long; default 60 s. */
  timeoutMs?: number;
  /** How often to try again while another process holds it; default 10 ms (for locks held
   * for milliseconds; long-held locks should poll slower). */
  retryMs?: number;
  /** Called once when the lock is busy and this call starts waiting, with its holder's pid. */
  onWait?: (holderPid: number | null) => void;
}

const inProcess = new Map<string, Promise<unknown>>();

/**
 * Run `fn` holding an exclusive lock shared by every prewarm process: a file created with
 * O_EXCL that records its holder. Calls in one process queue up behind each other first, so
 * they never spin against themselves.
 */
export async function withFileLock<T>(path: string, fn: () => Promise<T>, opts: FileLockOptions = {}): Promise<T> {
  const previous = inProcess.get(path);
  if (previous) opts.onWait?.(process.pid);
  const run = (previous ?? Promise.resolve()).catch(() => {}).then(() => lockedRun(path, fn, opts));
  inProcess.set(path, run);
  try {
    return await run;
  } finally {
    if (inProcess.get(path) === run) inProcess.delete(path);
  }
}

async function lockedRun<T>(path: string, fn: () => Promise<T>, opts: FileLockOptions): Promise<T> {
  await mkdir(dirname(path), { recursive: true });
  const timeoutMs = opts.timeoutMs ?? 60_000;
  const deadline = Date.now() + timeoutMs;
  let told = false;
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
    if (!told && opts.onWait) {
      told = true;
      opts.onWait(await holderPid(path));
    }
    await new Promise((r) => setTimeout(r, opts.retryMs ?? 10));
  }
  const heartbeat = setInterval(() => {
    const now = new Date();
    void utimes(path, now, now).catch(() => {});
  }, HEARTBEAT_MS);
  heartbeat.unref();
  try {
    return await fn();
  } finally {
    clearInterval(heartbeat);
    await rm(path, { force: true });
  }
}

async function holderPid(path: string): Promise<number | null> {
  try {
    return (JSON.parse(await readFile(path, 'utf8')) as { pid: number }).pid;
  } catch {
    return null;
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
