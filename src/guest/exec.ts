import { setTimeout as sleep } from 'node:timers/promises';
import type { AgentClient } from './agent.js';

/**
 * Running a process in the guest through guest-exec. The agent hands back output only once
 * the process has exited and its pipes have closed, so the result is polled for.
 */

export interface ExecOptions {
  path: string;
  args?: string[];
  /** Replaces the environment: `NAME=value` entries. Omitted, the agent's own is inherited. */
  env?: string[];
  inputData?: Buffer;
  timeoutMs: number;
  /** The longest pause between status polls; polling starts at 5 ms and doubles. */
  pollMs?: number;
  /** Run the process in a session of its own (through setsid, the default), so a timeout
   * kills all it started. False saves one process start (about 40 ms under TCG) for a
   * caller that cleans up after the process in another way (cgroup.kill). */
  newSession?: boolean;
}

export interface ExecResult {
  exitCode: number | null;
  signal: number | null;
  stdout: Buffer;
  stderr: Buffer;
  timedOut: boolean;
  /** The agent keeps at most 16 MiB of each stream. */
  outputTruncated: boolean;
}

interface ExecStatus {
  exited: boolean;
  exitcode?: number;
  signal?: number;
  'out-data'?: string;
  'err-data'?: string;
  'out-truncated'?: boolean;
  'err-truncated'?: boolean;
}

/**
 * The command runs under setsid (util-linux), which makes it the leader of its own process
 * group without forking, so a timeout can kill everything it started. Otherwise a leftover
 * child holding the output pipe would keep the agent reporting the command as running.
 */
const SETSID_PATH = '/usr/bin/setsid';
const FIRST_POLL_MS = 5;
const DEFAULT_POLL_MS = 50;
/** How long a killed command may take to be reaped, so its partial output can be collected. */
const KILL_GRACE_MS = 2_000;

export async function guestExec(agent: AgentClient, opts: ExecOptions): Promise<ExecResult> {
  const deadlineMs = Date.now() + opts.timeoutMs;
  const ownSession = opts.newSession ?? true;
  const { pid } = await agent.request<{ pid: number }>('guest-exec', {
    path: ownSession ? SETSID_PATH : opts.path,
    arg: ownSession ? [opts.path, ...(opts.args ?? [])] : opts.args ?? [],
    env: opts.env,
    'input-data': opts.inputData?.toString('base64'),
    'capture-output': true,
  });

  const status = await pollUntilExited(agent, pid, deadlineMs, opts.pollMs ?? DEFAULT_POLL_MS);
  if (status) return toResult(status, false);

  await killProcessGroup(agent, pid);
  const killed = await pollUntilExited(agent, pid, Date.now() + KILL_GRACE_MS, DEFAULT_POLL_MS);
  return toResult(killed ?? { exited: false }, true);
}

/** Poll guest-exec-status with backoff; undefined when the deadline passes first. */
async function pollUntilExited(
  agent: AgentClient,
  pid: number,
  deadlineMs: number,
  pollMs: number,
): Promise<ExecStatus | undefined> {
  let delayMs = Math.min(FIRST_POLL_MS, pollMs);
  for (;;) {
    const status = await agent.request<ExecStatus>('guest-exec-status', { pid });
    if (status.exited) return status;

    const remainingMs = deadlineMs - Date.now();
    if (remainingMs <= 0) return undefined;
    await sleep(Math.min(delayMs, remainingMs));
    delayMs = Math.min(delayMs * 2, pollMs);
  }
}

/**
 * Kill the command's process group, then the command itself in case it left its group.
 * The guest has no /bin/kill (procps is not installed), so the shell's builtin does it.
 */
async function killProcessGroup(agent: AgentClient, pid: number): Promise<void> {
  const script = `kill -KILL -${pid} 2>/dev/null; kill -KILL ${pid} 2>/dev/null; exit 0`;
  const { pid: killerPid } = await agent.request<{ pid: number }>('guest-exec', {
    path: '/bin/sh',
    arg: ['-c', script],
  });
  // Reap the killer too, or the agent keeps its status forever.
  await pollUntilExited(agent, killerPid, Date.now() + KILL_GRACE_MS, DEFAULT_POLL_MS);
}

function toResult(status: ExecStatus, timedOut: boolean): ExecResult {
  return {
    exitCode: status.exitcode ?? null,
    signal: status.signal ?? null,
    stdout: Buffer.from(status['out-data'] ?? '', 'base64'),
    stderr: Buffer.from(status['err-data'] ?? '', 'base64'),
    timedOut,
    outputTruncated: Boolean(status['out-truncated'] || status['err-truncated']),
  };
}
