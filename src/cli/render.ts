import type { TaskResult } from '../task/types.js';
import { mib } from './output.js';

/** A task's result as `task run` and `task show` print it, locally or from a service. */
export function renderResult(r: TaskResult): string {
  const lines = [
    `task ${r.taskId} on ${r.envName}: ${r.status}${r.message ? ` — ${r.message}` : ''}`,
    `  snapshot ${r.snapshotId ?? '-'}, VM ${r.vmId ?? '-'}, base ${(r.baseCommit ?? '-').slice(0, 12)}`,
    ...(r.commands ?? []).map((c) => `  [${c.status}] ${c.command} (exit ${c.exitCode ?? '-'}, ` +
      `${(c.durationMs / 1000).toFixed(2)} s, peak ${mib(c.peakMemoryBytes)})`),
    `  memory: limit ${mib(r.memoryLimitBytes ?? null)}, peak in guest ${mib(r.peakMemoryBytes)}, ` +
      `VMM on host ${mib(r.hostPeakRssBytes)}`,
    `  timings: ${Object.entries(r.timingsMs ?? {}).map(([k, v]) => `${k} ${v} ms`).join(', ')}`,
  ];
  if (r.diff) {
    const s = r.diff.stats;
    lines.push(s.tooLarge
      ? `  diff: too large (${mib(s.sizeBytes)}); not returned`
      : `  diff: ${s.filesChanged} file(s), +${s.insertions} -${s.deletions}` +
        (s.binaryFiles ? `, ${s.binaryFiles} binary` : '') + (r.diff.fromFailedTask ? ' (from a failed task)' : ''));
  }
  return lines.join('\n');
}

/** `task run`'s exit status for a task that ended with `status` (see the README). */
export function taskExitCode(status: string | undefined): number {
  return status === 'succeeded' ? 0 : status === 'cancelled' ? 130 : 2;
}
