import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { isAlive, selfRecord } from '../engine/proc.js';
import { PrewarmError } from '../util/errors.js';
import { prewarmHome } from '../util/paths.js';

/** One process keeps the pools of a PREWARM_HOME filled (`prewarm pool run` or the service);
 * it says so in this file, so that `pool ls` can name it and a second one refuses to start. */
export interface PoolManager {
  pid: number;
  startTime: string;
  startedAt: string;
}

const managerPath = () => join(prewarmHome(), 'pool-manager.json');

export async function readManager(): Promise<PoolManager | null> {
  try {
    const manager = JSON.parse(await readFile(managerPath(), 'utf8')) as PoolManager;
    return isAlive(manager.pid, manager.startTime) ? manager : null;
  } catch {
    return null;
  }
}

/** Become the pool manager; throws when a live process already is. Returns the release. */
export async function claimManager(): Promise<() => Promise<void>> {
  const me: PoolManager = { ...selfRecord(), startedAt: new Date().toISOString() };
  await mkdir(prewarmHome(), { recursive: true });
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      await writeFile(managerPath(), JSON.stringify(me), { flag: 'wx' });
      return async () => {
        const current = await readManager();
        if (current?.pid === me.pid && current.startTime === me.startTime) await rm(managerPath(), { force: true });
      };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
    const other = await readManager();
    if (other) {
      throw new PrewarmError('POOL_MANAGER_RUNNING', `the pools of ${prewarmHome()} are already kept ` +
        `filled by process ${other.pid} (started ${other.startedAt}); stop it first`);
    }
    // Left by a process that died: take its place.
    await rm(managerPath(), { force: true });
  }
  throw new PrewarmError('POOL_MANAGER_RUNNING', `could not claim ${managerPath()}; another process is starting pools`);
}
