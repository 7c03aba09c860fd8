import { describe, expect, it } from 'vitest';
import type { Guest } from '../../src/guest/guest.js';
import { freshenForHandOut } from '../../src/pool/handout.js';

/** A guest whose clock is `offsetMs` off the host's; counts the refreshes asked of it. */
function fakeGuest(offsetMs: number) {
  const calls = { getTime: 0, refresh: 0 };
  const guest = {
    vmId: 'vm-fake',
    agent: { getTimeMs: async () => { calls.getTime += 1; return Date.now() + offsetMs; } },
    refresh: async () => { calls.refresh += 1; },
  } as unknown as Guest;
  return { guest, calls };
}

describe('pool hand-out', () => {
  it('asks the agent for the time only, when the clock kept time', async () => {
    const { guest, calls } = fakeGuest(0);
    expect(await freshenForHandOut(guest)).toEqual({ clockSet: false, offsetMs: 0 });
    expect(calls).toEqual({ getTime: 1, refresh: 0 });
  });

  it('sets the clock (and reseeds, in the same guest process) when it is off', async () => {
    const { guest, calls } = fakeGuest(-5_000);
    const outcome = await freshenForHandOut(guest);
    expect(outcome.clockSet).toBe(true);
    expect(outcome.offsetMs).toBeLessThanOrEqual(-4_900);
    expect(calls).toEqual({ getTime: 1, refresh: 1 });
  });
});
