/**
 * What one command of a task came to: its status, in plain words, and the numbers behind it
 * (exit code, peak memory against the limit, OOM kills, refused forks, duration).
 */

export type CommandStatus =
  /** Exited 0 within every limit. */
  | 'succeeded'
  /** Exited non-zero (or was killed by a signal) without hitting a limit. */
  | 'failed'
  /** The OOM killer ended it at its memory limit; the whole command was killed. */
  | 'oom_killed'
  /** It ran past its wall-clock timeout; it and everything it started were killed. */
  | 'timed_out'
  /** It reached its process limit and forks were refused. This counts as a failure even when
   * the command exits 0: a refused fork is an error the command may not report. */
  | 'pids_limited';

export interface CommandResult {
  command: string;
  index: number;
  status: CommandStatus;
  /** One sentence that says what happened, naming the command and the limit it hit. */
  message: string;
  /** As the shell reports it: 128+N when a signal N ended the command. Null on a timeout. */
  exitCode: number | null;
  signal: number | null;
  /** The cgroup's memory.peak: the command's high-water mark, page cache included. */
  peakMemoryBytes: number | null;
  memoryLimitBytes: number;
  oomKills: number;
  pidsMax: number;
  /** How many forks pids.max refused. */
  pidsLimitHits: number;
  /** Processes the command left running when it exited; they were killed. */
  killedLeftovers: boolean;
  durationMs: number;
  /** The command's merged stdout and stderr, in the guest. */
  logPath: string;
  outputBytes: number;
  /** The last OUTPUT_TAIL_BYTES of the output. */
  outputTail: string;
}

export interface Outcome {
  command: string;
  exitCode: number | null;
  timedOut: boolean;
  timeoutMs: number;
  oomKills: number;
  peakMemoryBytes: number | null;
  memoryLimitBytes: number;
  pidsMax: number;
  pidsLimitHits: number;
}

export const OUTPUT_TAIL_BYTES = 16 * 1024;

/** Decide the status. An OOM kill explains a timeout or a failure, so it comes first. */
export function classify(o: Outcome): { status: CommandStatus; message: string } {
  const name = quoteCommand(o.command);
  if (o.oomKills > 0) {
    const peak =
      o.peakMemoryBytes === null ? 'peak unknown' : `peak ${formatMiB(o.peakMemoryBytes)}`;
    return {
      status: 'oom_killed',
      message:
        `${name} was killed by the OOM killer: it reached its ` +
        `${formatMiB(o.memoryLimitBytes)} limit (${peak})`,
    };
  }
  if (o.timedOut) {
    return {
      status: 'timed_out',
      message:
        `${name} timed out after ${formatSeconds(o.timeoutMs)}; ` +
        'it and everything it started were killed',
    };
  }
  if (o.pidsLimitHits > 0) {
    const forks = o.pidsLimitHits === 1 ? '1 fork was' : `${o.pidsLimitHits} forks were`;
    return {
      status: 'pids_limited',
      message:
        `${name} reached its limit of ${o.pidsMax} processes: ${forks} refused ` +
        `(${describeExit(o.exitCode)})`,
    };
  }
  if (o.exitCode === 0) return { status: 'succeeded', message: `${name} succeeded` };
  return { status: 'failed', message: `${name} ${describeExit(o.exitCode)}` };
}

/** The signal behind a shell exit status above 128 (ambiguous with `exit 137`, as in sh). */
export function signalOf(exitCode: number | null): number | null {
  return exitCode !== null && exitCode > 128 && exitCode < 160 ? exitCode - 128 : null;
}

function describeExit(exitCode: number | null): string {
  if (exitCode === null) return 'its exit status is unknown';
  const signal = signalOf(exitCode);
  return signal === null
    ? `exited with ${exitCode}`
    : `was killed by signal ${signal} (exit status ${exitCode})`;
}

const MAX_COMMAND_CHARS = 80;

export function quoteCommand(command: string): string {
  const oneLine = command.replace(/\s+/g, ' ').trim();
  const short =
    oneLine.length > MAX_COMMAND_CHARS ? `${oneLine.slice(0, MAX_COMMAND_CHARS - 1)}…` : oneLine;
  return `"${short}"`;
}

export function formatMiB(bytes: number): string {
  const mib = bytes / 2 ** 20;
  return `${mib >= 10 ? Math.round(mib) : Math.round(mib * 10) / 10} MiB`;
}

function formatSeconds(ms: number): string {
  return ms % 1000 === 0 ? `${ms / 1000} s` : `${(ms / 1000).toFixed(1)} s`;
}

/** Keeps the last `maxBytes` of a stream of chunks. */
export class OutputTail {
  private chunks: Buffer[] = [];
  private keptBytes = 0;

  constructor(private readonly maxBytes: number) {}

  push(chunk: Buffer): void {
    this.chunks.push(chunk);
    this.keptBytes += chunk.length;
    while (this.chunks.length > 1 && this.keptBytes - this.chunks[0].length >= this.maxBytes) {
      this.keptBytes -= this.chunks.shift()!.length;
    }
  }

  toString(): string {
    const all = Buffer.concat(this.chunks);
    return all.subarray(Math.max(0, all.length - this.maxBytes)).toString('utf8');
  }
}
