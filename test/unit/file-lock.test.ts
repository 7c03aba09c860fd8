import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { selfRecord } from '../../src/engine/proc.js';
import { withFileLock } from '../../src/util/file-lock.js';

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'file-lock-'));
});
afterEach(() => rm(dir, { recursive: true, force: true }));

describe('withFileLock', () => {
  it('runs one holder at a time in a process, telling the waiter once, and removes the file', async () => {
    const lock = join(dir, 'locks', 'a');
    const order: string[] = [];
    const waits: (number | null)[] = [];
    const hold = (name: string) => withFileLock(lock, async () => {
      order.push(`${name} in`);
      await new Promise((r) => setTimeout(r, 50));
      order.push(`${name} out`);
      return name;
    }, { onWait: (pid) => waits.push(pid) });
    expect(await Promise.all([hold('first'), hold('second')])).toEqual(['first', 'second']);
    expect(order).toEqual(['first in', 'first out', 'second in', 'second out']);
    expect(waits).toEqual([process.pid]);
    expect(existsSync(lock)).toBe(false);
  });

  it('waits for a holder in another process and names its pid', async () => {
    const lock = join(dir, 'b');
    // Another process holds the lock for a moment: the record it writes is what withFileLock writes.
    const script = `
      import { withFileLock } from './src/util/file-lock.js';
      await withFileLock(${JSON.stringify(lock)}, async () => {
        console.log('held');
        await new Promise((r) => setTimeout(r, 700));
      });`;
    const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    // Listen for the exit now: the child may be gone before this test gets to wait for it.
    const exited = new Promise<number | null>((resolve) => child.once('exit', resolve));
    await Promise.race([
      new Promise<void>((resolve) => child.stdout.once('data', () => resolve())),
      exited.then((code) => { throw new Error(`the holder exited (${code}) before taking the lock`); }),
    ]);
    const holder = JSON.parse(await readFile(lock, 'utf8')) as { pid: number };
    expect(holder.pid).toBe(child.pid);

    const waits: (number | null)[] = [];
    const startedAt = Date.now();
    await withFileLock(lock, async () => {}, { retryMs: 20, onWait: (pid) => waits.push(pid) });
    expect(waits).toEqual([child.pid]);
    expect(Date.now() - startedAt).toBeGreaterThan(300);
    expect(await exited).toBe(0);
  });

  it('takes over at once from a holder that has exited', async () => {
    const lock = join(dir, 'c');
    await writeFile(lock, JSON.stringify({ pid: 2 ** 22 + 1, startTime: 'gone' }));
    const waits: (number | null)[] = [];
    const startedAt = Date.now();
    expect(await withFileLock(lock, async () => 'mine', { onWait: (pid) => waits.push(pid) })).toBe('mine');
    expect(Date.now() - startedAt).toBeLessThan(5_000);
    expect(waits).toEqual([]);
  });

  it('gives up after its timeout, naming the lock file', async () => {
    const lock = join(dir, 'd');
    // A live holder: this process's own record, written by someone else's hand.
    await writeFile(lock, JSON.stringify(selfRecord()));
    const err = await withFileLock(lock, async () => 'never', { timeoutMs: 200 }).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'LOCK_TIMEOUT' });
    expect((err as Error).message).toContain(lock);
  });
});
