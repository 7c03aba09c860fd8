import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { isAlive, selfRecord } from '../engine/proc.js';

/**
 * Tasks waiting for memory, in any prewarm process: one small file each, holding how much
 * the task asks for and who waits. Pool refills leave that much room free, so a waiting task
 * is not starved by the pools it should push out. Files of dead processes are ignored and
 * removed.
 */
interface WaitingEntry {
  bytes: number;
  owner: { pid: number; startTime: string };
}

export class Waiters {
  constructor(readonly dir: string) {}

  /** Record a waiting request; the returned function removes it. */
  async add(bytes: number): Promise<() => Promise<void>> {
    await mkdir(this.dir, { recursive: true });
    const file = join(this.dir, `waiting-${process.pid}-${randomBytes(4).toString('hex')}.json`);
    await writeFile(file, JSON.stringify({ bytes, owner: selfRecord() }));
    return () => rm(file, { force: true });
  }

  async totalBytes(): Promise<number> {
    if (!existsSync(this.dir)) return 0;
    let total = 0;
    for (const name of await readdir(this.dir)) {
      if (!name.startsWith('waiting-')) continue;
      const file = join(this.dir, name);
      try {
        const entry = JSON.parse(await readFile(file, 'utf8')) as WaitingEntry;
        if (isAlive(entry.owner.pid, entry.owner.startTime)) total += entry.bytes;
        else await rm(file, { force: true });
      } catch {
        // Being written or removed right now.
      }
    }
    return total;
  }
}
