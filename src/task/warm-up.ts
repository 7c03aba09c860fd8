import { guestRepoDir } from '../env/guest-setup.js';
import { resolveTier, type EnvSpec } from '../env/spec.js';
import type { Guest } from '../guest/guest.js';
import { TaskError } from './errors.js';
import { runLimited } from './limits.js';
import { commandMemoryLimitBytes } from './reserve.js';

const WARM_UP_TIMEOUT_MS = 30_000;

/**
 * Run one no-op command through a task's exact path (the limits script, its cgroup, the
 * guest environment, the command's shell, in the repository) in a VM that waits for a task.
 *
 * Under TCG a restored guest runs every code path slowly the first time: QEMU translates it
 * then, and keeps the translation by guest physical address, so later processes that run the
 * same kernel paths and binaries reuse it. A pool VM that has done this once hands its task
 * a path that is already translated. Under KVM it costs a few milliseconds and gains nothing.
 * Its only trace in the guest is an empty log in /var/log/prewarm.
 */
export async function warmCommandPath(guest: Guest, spec: EnvSpec): Promise<void> {
  const result = await runLimited(guest, {
    taskId: `warm-up-${guest.vmId}`, index: 0, command: 'true', cwd: guestRepoDir(spec.name),
    memoryLimitBytes: commandMemoryLimitBytes(resolveTier(spec.tier).memoryMiB), pidsMax: spec.task.pidsMax,
    timeoutMs: WARM_UP_TIMEOUT_MS,
  });
  if (result.status !== 'succeeded') {
    throw new TaskError(`warm-up-${guest.vmId}`, `the warm-up command in VM ${guest.vmId} ` +
      `${result.status}: ${result.message ?? 'no message'}`);
  }
}
