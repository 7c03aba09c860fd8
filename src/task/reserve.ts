/** Guest memory a task's cgroup may not take: the guest kernel, init and the agent live in
 * it. Without it, a task at its limit would push the whole guest into OOM and the kernel
 * could kill the agent instead of the task. */
export const GUEST_RESERVE_MIB = 160;

/** What one command may use in a guest of `memoryMiB`: all of it less the guest's reserve. */
export function commandMemoryLimitBytes(memoryMiB: number): number {
  return (memoryMiB - GUEST_RESERVE_MIB) * 2 ** 20;
}
