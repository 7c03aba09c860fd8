import type { ExecResult } from '../guest/exec.js';
import { DEFAULT_ENV, type Guest } from '../guest/guest.js';
import { InputError, errorMessage } from '../util/errors.js';
import { logger } from '../util/log.js';
import {
  OUTPUT_TAIL_BYTES,
  OutputTail,
  classify,
  signalOf,
  type CommandResult,
} from './command-result.js';
import { TaskError } from './errors.js';
import { followGuestFile } from './guest-log.js';
import { LIMITS_SCRIPT, parseKeyValues, scriptEnv } from './limits-script.js';

/**
 * Run one command of a task in the guest under its limits: a fresh cgroup v2 with
 * memory.max (no swap; the whole command is killed on OOM) and pids.max, and a wall-clock
 * timeout enforced from the host. Output goes to a log file in the guest and is streamed
 * from there while the command runs. See limits-script.ts for the guest side.
 */

export interface LimitedCommand {
  taskId: string;
  /** The command's position in the task; names its cgroup and its log. */
  index: number;
  /** Run with `sh -c` in the guest's environment (the one prewarm-run loads). */
  command: string;
  /** An absolute directory in the guest. */
  cwd: string;
  /** Set over the guest's environment; sent in the exec request only, never written to disk. */
  env?: Readonly<Record<string, string>>;
  memoryLimitBytes: number;
  pidsMax: number;
  timeoutMs: number;
  /** Called with pieces of the merged stdout and stderr while the command runs. */
  onOutput?: (chunk: Buffer) => void;
  /** How often the log is read while it does not grow; 200 ms unless set. */
  outputPollMs?: number;
}

export { type CommandResult, type CommandStatus } from './command-result.js';

/** Logs stay in the guest's disk (not tmpfs): a chatty command's log is then reclaimable page
 * cache rather than memory charged against its limit until the VM ends. */
export const GUEST_LOG_DIR = '/var/log/prewarm';
const SUPERVISOR_FAILED = 125;
const COLLECT_TIMEOUT_MS = 30_000;
const MIN_MEMORY_LIMIT_BYTES = 8 * 2 ** 20;

export function commandLogPath(taskId: string, index: number): string {
  return `${GUEST_LOG_DIR}/${taskId}-${index}.log`;
}

export async function runLimited(guest: Guest, opts: LimitedCommand): Promise<CommandResult> {
  validate(opts);
  const { agent } = guest;
  const cgroup = `${opts.taskId}-${opts.index}`;
  const logPath = commandLogPath(opts.taskId, opts.index);
  const log = logger({ vmId: guest.vmId, taskId: opts.taskId, step: 'command' });

  const tail = new OutputTail(OUTPUT_TAIL_BYTES);
  const follower = followGuestFile(agent, logPath, {
    intervalMs: opts.outputPollMs,
    onChunk: (chunk) => {
      tail.push(chunk);
      opts.onOutput?.(chunk);
    },
  });

  // The supervisor runs as plain sh: only the command needs the guest's environment, and it
  // loads it inside the cgroup.
  const startedMs = performance.now();
  let exec: ExecResult | undefined;
  let values: Map<string, string>;
  let durationMs: number;
  try {
    exec = await agent.exec({
      path: '/bin/sh',
      args: ['-c', LIMITS_SCRIPT, 'prewarm-limits', 'run', cgroup, logPath,
        String(opts.memoryLimitBytes), String(opts.pidsMax), opts.cwd, opts.command],
      env: scriptEnv(DEFAULT_ENV, opts.env ?? {}),
      timeoutMs: opts.timeoutMs,
      newSession: false,
    });
    durationMs = Math.round(performance.now() - startedMs);

    values = parseKeyValues(exec.stdout.toString('utf8'));
    if (!values.has('cgroup_removed') && !values.has('cgroup_missing')) {
      if (!exec.timedOut) throw supervisorError(opts.taskId, cgroup, exec);
      // The timeout killed the supervisor: kill the cgroup's processes and read it from here.
      values = new Map([...values, ...(await collect(guest, opts.taskId, cgroup))]);
    }
  } catch (err) {
    await follower.stop().catch(() => undefined);
    // The agent failed mid-run: try not to leave the command running.
    if (exec === undefined) await collect(guest, opts.taskId, cgroup).catch(() => undefined);
    if (err instanceof TaskError) throw err;
    throw new TaskError(opts.taskId, `running command ${opts.index} failed: ${errorMessage(err)}`,
      { cause: err });
  }

  let outputBytes: number;
  try {
    outputBytes = await follower.stop();
  } catch (err) {
    throw new TaskError(opts.taskId, `reading the output of command ${opts.index} from ` +
      `${logPath} failed: ${errorMessage(err)}`, { cause: err });
  }

  // A command that ended just as the timeout fired keeps its own result.
  const finished = values.has('exit_code');
  const timedOut = exec.timedOut && !finished;
  const exitCode = finished ? Number(values.get('exit_code')) : null;
  const peak = values.get('peak_memory_bytes');
  const outcome = {
    command: opts.command,
    exitCode,
    timedOut,
    timeoutMs: opts.timeoutMs,
    // Every process a group kill ends counts in oom_kill.
    oomKills: count(values, 'memory_oom_kill'),
    peakMemoryBytes: peak === undefined ? null : Number(peak),
    memoryLimitBytes: opts.memoryLimitBytes,
    pidsMax: opts.pidsMax,
    pidsLimitHits: count(values, 'pids_max'),
  };
  const { status, message } = classify(outcome);
  log.debug({ index: opts.index, status, durationMs, peak: outcome.peakMemoryBytes }, message);

  return {
    command: opts.command,
    index: opts.index,
    status,
    message,
    exitCode,
    signal: timedOut ? 9 : signalOf(exitCode), // the host's kill is SIGKILL
    peakMemoryBytes: outcome.peakMemoryBytes,
    memoryLimitBytes: opts.memoryLimitBytes,
    oomKills: outcome.oomKills,
    pidsMax: opts.pidsMax,
    pidsLimitHits: outcome.pidsLimitHits,
    killedLeftovers: values.get('killed_leftovers') === '1',
    durationMs,
    logPath,
    outputBytes,
    outputTail: tail.toString(),
  };
}

/** Kill what is left in the cgroup, read its counters and remove it. */
async function collect(guest: Guest, taskId: string, cgroup: string): Promise<Map<string, string>> {
  const exec = await guest.agent.exec({
    path: '/bin/sh',
    args: ['-c', LIMITS_SCRIPT, 'prewarm-limits', 'collect', cgroup],
    env: scriptEnv(DEFAULT_ENV, {}),
    timeoutMs: COLLECT_TIMEOUT_MS,
  });
  if (exec.exitCode !== 0) throw supervisorError(taskId, cgroup, exec);
  return parseKeyValues(exec.stdout.toString('utf8'));
}

function supervisorError(taskId: string, cgroup: string, exec: ExecResult): TaskError {
  const stderr = exec.stderr.toString('utf8').trim() || '(no output)';
  const how = exec.exitCode === SUPERVISOR_FAILED ? 'failed' : `ended with ${exec.exitCode}`;
  return new TaskError(taskId, `the guest's limits script for cgroup ${cgroup} ${how}: ${stderr}`,
    { code: 'TASK_LIMITS' });
}

function count(values: Map<string, string>, key: string): number {
  const n = Number(values.get(key) ?? 0);
  return Number.isFinite(n) ? n : 0;
}

const TASK_ID = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$/;
const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;

function validate(opts: LimitedCommand): void {
  const bad = (field: string, why: string) => {
    throw new InputError(`runLimited: ${field} ${why}`);
  };
  if (!TASK_ID.test(opts.taskId)) bad('taskId', `"${opts.taskId}" must match ${TASK_ID}`);
  if (!Number.isSafeInteger(opts.index) || opts.index < 0) bad('index', 'must be an integer ≥ 0');
  if (!opts.command.trim()) bad('command', 'is empty');
  if (opts.command.includes('\0')) bad('command', 'contains a NUL byte');
  if (!opts.cwd.startsWith('/')) bad('cwd', `"${opts.cwd}" must be an absolute path`);
  const memory = opts.memoryLimitBytes;
  if (!Number.isSafeInteger(memory) || memory < MIN_MEMORY_LIMIT_BYTES) {
    bad('memoryLimitBytes', `must be an integer of at least ${MIN_MEMORY_LIMIT_BYTES}`);
  }
  if (!Number.isSafeInteger(opts.pidsMax) || opts.pidsMax < 1) bad('pidsMax', 'must be ≥ 1');
  if (!(opts.timeoutMs > 0)) bad('timeoutMs', 'must be > 0');
  for (const [name, value] of Object.entries(opts.env ?? {})) {
    if (!ENV_NAME.test(name)) bad(`env.${name}`, `is not a valid variable name (${ENV_NAME})`);
    if (name.startsWith('PREWARM_ENV_')) bad(`env.${name}`, 'uses the reserved PREWARM_ENV_');
    if (value.includes('\0')) bad(`env.${name}`, 'contains a NUL byte');
  }
}
