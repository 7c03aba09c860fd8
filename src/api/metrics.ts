import { readFile } from 'node:fs/promises';
import type { StateStore, Task, TaskStatus } from '../state/db.js';

/**
 * Prometheus metrics in the text exposition format (0.0.4), written by hand.
 *
 * Histograms are built from finished tasks: seeded from the state store when the service
 * starts (the newest SEED_LIMIT), then fed each task this service finishes. Tasks the CLI
 * runs beside the service are counted from the next start on.
 */
const SEED_LIMIT = 10_000;
const RESTORE_BUCKETS_S = [0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30];
const DURATION_BUCKETS_S = [1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600];
const ENDED: TaskStatus[] = ['succeeded', 'failed', 'oom_killed', 'timed_out', 'error', 'cancelled'];

class Histogram {
  private readonly counts: number[];
  private sum = 0;
  private count = 0;

  constructor(private readonly buckets: number[]) {
    this.counts = buckets.map(() => 0);
  }

  observe(value: number): void {
    this.sum += value;
    this.count += 1;
    this.buckets.forEach((le, i) => {
      if (value <= le) this.counts[i] += 1;
    });
  }

  lines(name: string, labels: Record<string, string>): string[] {
    const out = this.buckets.map((le, i) =>
      `${name}_bucket${labelText({ ...labels, le: String(le) })} ${this.counts[i]}`);
    out.push(`${name}_bucket${labelText({ ...labels, le: '+Inf' })} ${this.count}`);
    out.push(`${name}_sum${labelText(labels)} ${round(this.sum)}`);
    out.push(`${name}_count${labelText(labels)} ${this.count}`);
    return out;
  }
}

function round(value: number): number {
  return Math.round(value * 1e6) / 1e6;
}

function escapeLabel(value: string): string {
  return value.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n');
}

function labelText(labels: Record<string, string>): string {
  const entries = Object.entries(labels);
  if (entries.length === 0) return '';
  return `{${entries.map(([k, v]) => `${k}="${escapeLabel(v)}"`).join(',')}}`;
}

function family(name: string, type: 'gauge' | 'counter' | 'histogram', help: string, lines: string[]): string[] {
  return [`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`, ...lines];
}

/** MemTotal and MemAvailable from /proc/meminfo, in bytes; null where it cannot be read. */
export async function hostMemory(): Promise<{ totalBytes: number; availableBytes: number } | null> {
  try {
    const text = await readFile('/proc/meminfo', 'utf8');
    const kib = (field: string) => Number(new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(text)?.[1]);
    const totalBytes = kib('MemTotal') * 1024;
    const availableBytes = kib('MemAvailable') * 1024;
    return Number.isFinite(totalBytes) && Number.isFinite(availableBytes) ? { totalBytes, availableBytes } : null;
  } catch {
    return null;
  }
}

export interface QueueGauges {
  running: number;
  concurrency: number;
}

export class ServiceMetrics {
  private readonly restore = new Histogram(RESTORE_BUCKETS_S);
  private readonly durations = new Map<string, Histogram>();

  constructor(private readonly state: StateStore) {}

  /** Count the finished tasks already in the state store. */
  async seed(): Promise<void> {
    for (const task of await this.state.tasks.list({ status: ENDED, limit: SEED_LIMIT })) this.observe(task);
  }

  /** Count one finished task (its restore time and its duration). */
  observe(task: Task): void {
    if (!ENDED.includes(task.status)) return;
    const restoreMs = (task.result?.timingsMs as Record<string, unknown> | undefined)?.restore;
    if (typeof restoreMs === 'number') this.restore.observe(restoreMs / 1000);
    if (task.startedAt && task.finishedAt) {
      let histogram = this.durations.get(task.status);
      if (!histogram) this.durations.set(task.status, histogram = new Histogram(DURATION_BUCKETS_S));
      histogram.observe((task.finishedAt.getTime() - task.startedAt.getTime()) / 1000);
    }
  }

  async observeId(taskId: string): Promise<void> {
    const task = await this.state.tasks.get(taskId);
    if (task) this.observe(task);
  }

  async render(queue: QueueGauges): Promise<string> {
    const [queued, running, pools, memory] = await Promise.all([
      this.state.tasks.list({ status: 'queued', limit: SEED_LIMIT }),
      this.state.tasks.list({ status: 'running', limit: SEED_LIMIT }),
      this.state.pools.list(),
      hostMemory(),
    ]);
    const durationLines = [...this.durations.entries()]
      .sort(([a], [b]) => a.localeCompare(b))
      .flatMap(([status, h]) => h.lines('prewarm_task_duration_seconds', { status }));

    const lines = [
      ...family('prewarm_restore_seconds', 'histogram',
        'Time to restore a VM from a snapshot to a working agent (task timings.restore)',
        this.restore.lines('prewarm_restore_seconds', {})),
      ...family('prewarm_task_duration_seconds', 'histogram',
        'Task run time from start to end, by final status', durationLines),
      ...family('prewarm_tasks', 'gauge', 'Tasks waiting or running now (all processes)', [
        `prewarm_tasks${labelText({ status: 'queued' })} ${queued.length}`,
        `prewarm_tasks${labelText({ status: 'running' })} ${running.length}`,
      ]),
      ...family('prewarm_service_running_tasks', 'gauge', 'Tasks this service is running',
        [`prewarm_service_running_tasks ${queue.running}`]),
      ...family('prewarm_service_concurrency', 'gauge', 'Tasks this service runs at most at once',
        [`prewarm_service_concurrency ${queue.concurrency}`]),
      ...family('prewarm_pool_target_size', 'gauge', 'Warm VMs wanted per environment',
        pools.map((p) => `prewarm_pool_target_size${labelText({ env: p.envName })} ${p.targetSize}`)),
    ];
    if (memory) {
      lines.push(
        ...family('prewarm_host_memory_total_bytes', 'gauge', 'Host memory (MemTotal)',
          [`prewarm_host_memory_total_bytes ${memory.totalBytes}`]),
        ...family('prewarm_host_memory_available_bytes', 'gauge', 'Host memory available (MemAvailable)',
          [`prewarm_host_memory_available_bytes ${memory.availableBytes}`]),
      );
    }
    // The host memory budget (admitted VM memory against the budget) joins here when the pool
    // part's budget lands.
    return `${lines.join('\n')}\n`;
  }
}
