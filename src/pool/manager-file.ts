import { join } from 'node:path';
import { PrewarmError } from '../util/errors.js';
import { claimHolder, readHolder, type Holder } from '../util/holder-file.js';
import { prewarmHome } from '../util/paths.js';

/** One process keeps the pools of a PREWARM_HOME filled (`prewarm pool run` or the service);
 * it says so in this file, so that `pool ls` can name it and a second one refuses to start. */
export type PoolManager = Holder;

const managerPath = () => join(prewarmHome(), 'pool-manager.json');

export function readManager(): Promise<PoolManager | null> {
  return readHolder<PoolManager>(managerPath());
}

/** Become the pool manager; throws when a live process already is. Returns the release. */
export function claimManager(): Promise<() => Promise<void>> {
  return claimHolder<PoolManager>(managerPath(), {}, (other) => new PrewarmError('POOL_MANAGER_RUNNING', other
    ? `the pools of ${prewarmHome()} are already kept filled by process ${other.pid} (started ` +
      `${other.startedAt}); stop it first`
    : `could not claim ${managerPath()}; another process is starting pools`));
}
