import { reapVms } from '../engine/reaper.js';
import { reapImageBuilds } from '../image/build.js';
import { logger } from '../util/log.js';

/** Every prewarm process starts by removing what killed prewarm processes left behind. */
export async function reapLeftovers(): Promise<void> {
  const reaped = await reapVms();
  await reapImageBuilds();
  if (reaped.length > 0) logger({ part: 'startup' }).info({ vmIds: reaped }, 'removed leftover VMs');
}
