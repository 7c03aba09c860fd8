/** Percentiles over raw samples (nearest rank), kept with the samples so anyone can check. */
export interface Series {
  name: string;
  unit: 'ms' | 'bytes';
  samples: number[];
  p50: number;
  p95: number;
  min: number;
  max: number;
}

export function percentile(samples: number[], p: number): number {
  if (samples.length === 0) return NaN;
  const sorted = [...samples].sort((a, b) => a - b);
  const rank = Math.ceil((p / 100) * sorted.length);
  return sorted[Math.min(sorted.length, Math.max(1, rank)) - 1];
}

export function series(name: string, samples: number[], unit: Series['unit'] = 'ms'): Series {
  return {
    name, unit, samples,
    p50: percentile(samples, 50), p95: percentile(samples, 95),
    min: Math.min(...samples), max: Math.max(...samples),
  };
}

export async function timeMs<T>(fn: () => Promise<T>): Promise<[number, T]> {
  const startedAt = performance.now();
  const value = await fn();
  return [performance.now() - startedAt, value];
}
