import type { Guest } from '../guest/guest.js';

const HANDOUT_TIMEOUT_MS = 30_000;
/** A guest clock this far outside the hand-out's round trip is set again. */
const CLOCK_SLACK_MS = 100;

/**
 * Make a pool VM fit for a task at hand-out: the guest may have sat idle for minutes. One
 * request the agent answers itself (guest-get-time, no guest process: those cost 0.1-0.3 s
 * each under TCG) shows the guest is alive and whether its clock kept time; only a clock
 * that is off gets set (with a reseed, in one process). Entropy needs nothing here: the VM
 * was reseeded with host randomness when it was restored, so its CRNG has been its own
 * since, not a state it shares with other clones. Returns whether the clock had to be set.
 */
export async function freshenForHandOut(guest: Guest): Promise<{ clockSet: boolean; offsetMs: number }> {
  const sentMs = Date.now();
  const guestMs = await guest.agent.getTimeMs({ timeoutMs: HANDOUT_TIMEOUT_MS });
  const receivedMs = Date.now();
  const offsetMs = guestMs < sentMs ? guestMs - sentMs : guestMs > receivedMs ? guestMs - receivedMs : 0;
  const clockSet = !Number.isFinite(guestMs) || Math.abs(offsetMs) > CLOCK_SLACK_MS;
  if (clockSet) await guest.refresh();
  return { clockSet, offsetMs: Math.round(offsetMs) };
}
