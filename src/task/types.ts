/** A task as submitted: an environment, optionally a commit, and commands to run in order. */
export interface TaskRequest {
  envName: string;
  /** Check out this commit before running (fetched when the snapshot lacks it). */
  commit?: string;
  /** Shell commands run one after another in the repository; the first failure stops. */
  commands: string[];
  /** Wall-clock limit for all commands; default from the environment spec. */
  timeoutSeconds?: number;
  /** Run on a stale snapshot instead of rebuilding it first. */
  allowStale?: boolean;
  /** Refuse instead of rebuilding when the snapshot is stale. */
  noRebuild?: boolean;
}

export type TaskStatus = 'succeeded' | 'failed' | 'oom_killed' | 'timed_out' | 'cancelled' | 'error';

export interface CommandOutcome {
  command: string;
  status: 'succeeded' | 'failed' | 'oom_killed' | 'timed_out' | 'pids_limited';
  exitCode: number | null;
  signal: number | null;
  peakMemoryBytes: number | null;
  oomKills: number;
  pidsLimitHits: number;
  durationMs: number;
}

export interface DiffStats {
  filesChanged: number;
  insertions: number;
  deletions: number;
  binaryFiles: number;
  sizeBytes: number;
  tooLarge: boolean;
}

export interface TaskResult {
  taskId: string;
  envName: string;
  snapshotId: string;
  vmId: string | null;
  status: TaskStatus;
  /** Plain words for anything but success: which command, what limit, what to do. */
  message: string | null;
  baseCommit: string;
  commands: CommandOutcome[];
  memoryLimitBytes: number;
  /** Highest memory.peak of any command, inside the guest. */
  peakMemoryBytes: number | null;
  /** Highest resident memory of the VMM process on the host while the task ran. */
  hostPeakRssBytes: number | null;
  timingsMs: Record<string, number>;
  /** `patch` is the text to show; `patchBytes` the exact bytes (stored, applied). */
  diff: { patch: string | null; patchBytes?: Buffer; stats: DiffStats; fromFailedTask: boolean } | null;
  startedAt: string;
  finishedAt: string;
}
