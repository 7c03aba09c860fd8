import { existsSync } from 'node:fs';
import { openState, type Task } from '../state/db.js';
import { isAlive } from '../engine/proc.js';
import { paths } from '../util/paths.js';
import { reapVms } from '../engine/reaper.js';
import { reapImageBuilds } from '../image/build.js';
import { logger } from '../util/log.js';

/** Every prewarm process starts by removing what killed prewarm processes left behind. */
export async function reapLeftovers(): Promise<void> {
  const reaped = await reapVms();
  await reapImageBuilds();
  const recovered = await recoverTasks();
  if (reaped.length > 0) logger({ part: 'startup' }).info({ vmIds: reaped }, 'removed leftover VMs');
  if (recovered.length > 0) {
    process.stderr.write(`prewarm: ${recovered.length} task(s) were running in a prewarm process ` +
      `that has died; marked error: ${recovered.map((t) => t.id).join(', ')}\n`);
  }
}

/** Tasks whose runner process died (killed CLI, crashed service) end as 'error'. */
async function recoverTasks(): Promise<Task[]> {
  if (!existsSync(paths.database())) return [];
  const state = openState();
  try {
    return await state.tasks.recoverOrphans((runner) => isAlive(runner.pid, runner.startTime));
  } finally {
    state.close();
  }
}
