import { describe, expect, it } from 'vitest';
import type { TaskPeak } from '../../src/state/db.js';
import { percentile, rightSize, smallestTierFor } from '../../src/pool/right-size.js';

const MiB = 2 ** 20;
const peak = (mib: number, status: TaskPeak['status'] = 'succeeded'): TaskPeak =>
  ({ taskId: `task-${mib}`, status, peakMemoryBytes: mib * MiB, finishedAt: new Date() });

describe('right-sizing from recorded peaks', () => {
  it('takes nearest-rank percentiles', () => {
    const values = Array.from({ length: 20 }, (_, i) => i + 1);
    expect(percentile(values, 50)).toBe(10);
    expect(percentile(values, 95)).toBe(19);
    expect(percentile([7], 95)).toBe(7);
    expect(percentile([], 50)).toBeNull();
  });

  it('names the smallest tier whose task limit holds the peak with 25% headroom', () => {
    // small: 2048 MiB less the guest's 160 MiB = 1888 MiB for the task.
    expect(smallestTierFor(1500 * MiB)).toBe('small');
    expect(smallestTierFor(1600 * MiB)).toBe('standard');
    expect(smallestTierFor(14000 * MiB)).toBeNull();
    expect(smallestTierFor(null)).toBeNull();
  });

  it('summarises peaks and OOM kills', () => {
    const peaks = [...Array.from({ length: 19 }, (_, i) => peak(100 + i * 10)), peak(1888, 'oom_killed')];
    const usage = rightSize('hello-node', peaks);
    expect(usage).toMatchObject({
      envName: 'hello-node', count: 20, p50Bytes: 190 * MiB, p95Bytes: 280 * MiB, maxBytes: 1888 * MiB,
      oomKills: 1, tierForP95: 'small', tierForMax: 'standard',
    });
    expect(rightSize('empty', [])).toMatchObject({ count: 0, p50Bytes: null, tierForMax: null });
  });
});
