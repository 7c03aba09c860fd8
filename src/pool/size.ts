/** The most VMs one environment's pool may keep. */
export const POOL_MAX_SIZE = 1000;
/** An idle restored VM's CPU use under TCG, measured here: 6% of one core (its timer ticks
 * are emulated). A pool past a few per core takes CPU from the tasks it is meant to speed up. */
export const IDLE_VM_CORE_SHARE = 0.06;
