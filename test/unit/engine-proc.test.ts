import { realpathSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { guestRamSplit, residentMemory } from '../../src/engine/proc.js';

describe('guestRamSplit', () => {
  it('splits a process by one mapped file: here the node binary against the rest of node', () => {
    const whole = residentMemory(process.pid)!;
    const split = guestRamSplit(process.pid, realpathSync(process.execPath))!;
    // The running binary's text is resident; so is node's heap, outside that mapping.
    expect(split.guestRam.rssBytes).toBeGreaterThan(0);
    expect(split.vmm.rssBytes).toBeGreaterThan(0);
    // The two parts add up to the whole, give or take what changed between the two reads.
    const sum = split.guestRam.rssBytes + split.vmm.rssBytes;
    expect(Math.abs(sum - whole.rssBytes)).toBeLessThan(whole.rssBytes * 0.05);
  });

  it('puts everything outside when no mapping has the path, and is null for a gone process', () => {
    const split = guestRamSplit(process.pid, '/nonexistent/memory.raw')!;
    expect(split.guestRam).toEqual({ rssBytes: 0, pssBytes: 0, privateBytes: 0 });
    expect(split.vmm.rssBytes).toBeGreaterThan(0);
    expect(guestRamSplit(2 ** 22 + 1, '/x')).toBeNull();
  });
});
