import { TIERS, type TierName } from '../env/spec.js';
import type { TaskPeak } from '../state/db.js';
import { commandMemoryLimitBytes } from '../task/reserve.js';

/** A tier fits when its task limit holds the peak plus this much. */
export const HEADROOM = 0.25;

export interface UsageReport {
  envName: string;
  /** Tasks with a recorded peak (newest first, at most the limit asked for). */
  count: number;
  p50Bytes: number | null;
  p95Bytes: number | null;
  maxBytes: number | null;
  oomKills: number;
  /** Smallest tier whose task limit holds p95 (and max) with HEADROOM; null when even the
   * largest does not, or when there are no peaks. */
  tierForP95: TierName | null;
  tierForMax: TierName | null;
}

/** Nearest-rank percentile of sorted values. */
export function percentile(sorted: number[], p: number): number | null {
  if (sorted.length === 0) return null;
  const rank = Math.ceil((p / 100) * sorted.length);
  return sorted[Math.min(sorted.length, Math.max(1, rank)) - 1];
}

/** The memory a task may use in a tier: the tier less what the guest keeps for itself. */
export function taskLimitBytes(tier: TierName): number {
  return commandMemoryLimitBytes(TIERS[tier].memoryMiB);
}

export function smallestTierFor(peakBytes: number | null): TierName | null {
  if (peakBytes === null) return null;
  const tiers = (Object.keys(TIERS) as TierName[]).sort((a, b) => TIERS[a].memoryMiB - TIERS[b].memoryMiB);
  return tiers.find((t) => taskLimitBytes(t) >= peakBytes * (1 + HEADROOM)) ?? null;
}

export function rightSize(envName: string, peaks: TaskPeak[]): UsageReport {
  const sorted = peaks.map((p) => p.peakMemoryBytes).sort((a, b) => a - b);
  const p95Bytes = percentile(sorted, 95);
  const maxBytes = sorted.at(-1) ?? null;
  return {
    envName, count: sorted.length, p50Bytes: percentile(sorted, 50), p95Bytes, maxBytes,
    oomKills: peaks.filter((p) => p.status === 'oom_killed').length,
    tierForP95: smallestTierFor(p95Bytes), tierForMax: smallestTierFor(maxBytes),
  };
}
