import { join } from 'node:path';
import { InputError } from '../util/errors.js';
import { claimHolder, readHolder, type Holder } from '../util/holder-file.js';
import { prewarmHome } from '../util/paths.js';

/** The `prewarm serve` of a PREWARM_HOME, as it records itself: one per home (a second would
 * share the queue and double the work the host takes on). */
export interface ServiceHolder extends Holder {
  host: string;
  /** As asked for; 0 means the service chose a free port. */
  port: number;
}

const servicePath = () => join(prewarmHome(), 'service.json');

export function readService(): Promise<ServiceHolder | null> {
  return readHolder<ServiceHolder>(servicePath());
}

/** Become the service of this home; an InputError naming the other when one runs. */
export function claimService(host: string, port: number): Promise<() => Promise<void>> {
  return claimHolder<ServiceHolder>(servicePath(), { host, port }, (other) => new InputError(other
    ? `another prewarm serve (process ${other.pid}, on ${other.host}:${other.port}, started ` +
      `${other.startedAt}) serves ${prewarmHome()}; one service per PREWARM_HOME: stop it, or ` +
      'give this one its own PREWARM_HOME'
    : `could not claim ${servicePath()}; another prewarm serve is starting`));
}
