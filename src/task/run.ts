import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { mkdir, readFile, rm } from 'node:fs/promises';
import { SnapshotStore } from '../snapshot/store.js';
import { envStatus } from '../env/status.js';
import { prepareEnv, redact } from '../env/prepare.js';
import { guestRepoDir } from '../env/guest-setup.js';
import { HostRepo } from '../env/repo.js';
import { resolveSecrets, resolveTier, type EnvSpec } from '../env/spec.js';
import type { Guest } from '../guest/guest.js';
import { CancelledError, PrewarmError, cancelReason, errorMessage, throwIfCancelled } from '../util/errors.js';
import { logger } from '../util/log.js';
import { paths } from '../util/paths.js';
import { restoreReady, type ReadyVm, type VmSource } from './acquire.js';
import { runLimited } from './limits.js';
import { commandMemoryLimitBytes } from './reserve.js';
import { extractDiff } from './diff.js';
import type { CommandOutcome, TaskRequest, TaskResult, TaskStatus } from './types.js';

const DIFF_MAX_BYTES = 50 * 2 ** 20;
const VM_EXIT_GRACE_MS = 2_000;
const HOST_SAMPLE_MS = 250;

export function newTaskId(): string {
  return `task-${randomBytes(6).toString('hex')}`;
}

export interface RunTaskOptions {
  taskId?: string;
  /** Live output of the commands, as the guest writes it. */
  onOutput?: (chunk: Buffer) => void;
  /** Progress in words: "restored vm-… in 312 ms", "running: npm test". */
  onEvent?: (message: string) => void;
  vmSource?: VmSource;
  /** Called once the VM is known, so a caller can record it. */
  onVm?: (vmId: string, snapshotId: string) => void;
  /**
   * Cancels the task: it stops at once wherever it is (waiting for memory, restoring, running
   * a command), its VM is destroyed and the result has status 'cancelled' with the abort
   * reason. Shortcoming: an automatic rebuild of a stale snapshot is not interrupted; the
   * cancel takes effect when the rebuild ends (the snapshot it made is kept). Removing it
   * needs prepareEnv to take a signal.
   */
  signal?: AbortSignal;
}

/** Pick the snapshot a task runs on: the fresh one, a rebuilt one, or (when the user allows
 * it) the newest stale one. A stale snapshot is never used silently. */
async function chooseSnapshot(spec: EnvSpec, req: TaskRequest, store: SnapshotStore, say: (m: string) => void): Promise<{ snapshotId: string; prepareMs: number }> {
  let status: Awaited<ReturnType<typeof envStatus>>;
  try {
    status = await envStatus(spec, store);
  } catch (err) {
    // Freshness unknown (the repository's remote is down): a user who allows a stale
    // snapshot gets the newest one, told why.
    const newest = req.allowStale && err instanceof PrewarmError && err.code === 'REPO_UNREACHABLE'
      ? (await store.list({ envName: spec.name })).find((s) => s.valid) : undefined;
    if (!newest) throw err;
    say(`cannot tell whether snapshot ${newest.id} is fresh (${errorMessage(err)}); running on it as asked`);
    return { snapshotId: newest.id, prepareMs: 0 };
  }
  if (status.state === 'fresh') return { snapshotId: status.snapshotId!, prepareMs: 0 };
  if (req.allowStale && status.newestSnapshotId) {
    say(`snapshot ${status.newestSnapshotId} is stale (${status.reasons.join('; ')}); running on it as asked`);
    return { snapshotId: status.newestSnapshotId, prepareMs: 0 };
  }
  if (req.noRebuild) {
    throw new PrewarmError('SNAPSHOT_STALE', `environment ${spec.name} has no fresh snapshot ` +
      `(${status.reasons.join('; ')}); run \`prewarm env prepare ${spec.name}\`, or pass --allow-stale`);
  }
  say(`environment ${spec.name} is ${status.state} (${status.reasons.join('; ')}); preparing it first`);
  const startedAt = performance.now();
  const prepared = await prepareEnv(spec, { quiet: true });
  return { snapshotId: prepared.snapshotId, prepareMs: performance.now() - startedAt };
}

/**
 * Run a task: restore a VM from the environment's fresh snapshot, check out the commit, run
 * the commands under the tier's memory limit, extract the diff, destroy the VM. Whatever
 * happens, the VM is destroyed and a result comes back; only bad input throws.
 */
export async function runTask(spec: EnvSpec, req: TaskRequest, opts: RunTaskOptions = {}): Promise<TaskResult> {
  const taskId = opts.taskId ?? newTaskId();
  const log = logger({ taskId, envId: spec.name });
  const say = (m: string) => opts.onEvent?.(m);
  const secrets = resolveSecrets(spec);
  const tier = resolveTier(spec.tier);
  const memoryLimitBytes = commandMemoryLimitBytes(tier.memoryMiB);
  const timeoutMs = (req.timeoutSeconds ?? spec.task.timeoutSeconds) * 1000;
  if (req.commands.length === 0) throw new PrewarmError('BAD_INPUT', 'a task needs at least one command');

  const startedAt = new Date();
  const timings: Record<string, number> = {};
  const signal = opts.signal;
  throwIfCancelled(signal);
  // A bad ref is bad input: refused before any snapshot is chosen or VM started.
  const commit = req.commit ? await HostRepo.forSpec(spec).resolveRef(req.commit) : undefined;
  const store = await SnapshotStore.open();
  const t0 = performance.now();
  const { snapshotId, prepareMs } = await chooseSnapshot(spec, req, store, say);
  timings.freshness = Math.round(performance.now() - t0 - prepareMs);
  if (prepareMs) timings.prepare = Math.round(prepareMs);
  const stored = await store.get(snapshotId);
  const snapshotCommit = String((stored.manifest.inputs as { commit?: string }).commit ?? '');

  const result: TaskResult = {
    taskId, envName: spec.name, snapshotId, vmId: null, status: 'error', message: null,
    baseCommit: snapshotCommit, commands: [], memoryLimitBytes, peakMemoryBytes: null,
    hostPeakRssBytes: null, timingsMs: timings, diff: null, startedAt: startedAt.toISOString(),
    finishedAt: '',
  };

  let ready: ReadyVm | undefined;
  let sampler: NodeJS.Timeout | undefined;
  /** What the task was doing, for the message when its VM dies or it is cancelled. */
  let doing = 'getting a VM';
  const deathMessage = (vmId: string) =>
    `VM ${vmId} stopped in the middle of the task (its QEMU process exited) while ${doing}`;
  const cancelled = rejectOnAbort(signal);
  try {
    throwIfCancelled(signal);
    const source = opts.vmSource ?? ((s, id, o) => restoreReady(s, id, store, o));
    ready = await source(spec, snapshotId, { signal, onWait: say });
    timings[ready.fromPool ? 'pool' : 'restore'] = Math.round(ready.acquireMs);
    result.vmId = ready.vm.id;
    opts.onVm?.(ready.vm.id, snapshotId);
    say(`${ready.fromPool ? 'took' : 'restored'} ${ready.vm.id} from ${snapshotId} in ${Math.round(ready.acquireMs)} ms`);
    const vm = ready.vm;
    sampler = setInterval(() => {
      const rss = vm.hostMemory()?.rssBytes ?? null;
      if (rss !== null) result.hostPeakRssBytes = Math.max(result.hostPeakRssBytes ?? 0, rss);
    }, HOST_SAMPLE_MS);

    // Every step below races the VM's death and a cancel; whichever comes first ends it.
    const interrupted = Promise.race([vm.processExited.then(() => {
      throw new PrewarmError('VM_DIED', deathMessage(vm.id));
    }), cancelled]);
    interrupted.catch(() => {});

    if (commit) {
      doing = `checking out ${req.commit}`;
      const t = performance.now();
      result.baseCommit = await Promise.race([checkout(ready.guest, spec, commit), interrupted]);
      timings.checkout = Math.round(performance.now() - t);
    }

    const runStart = performance.now();
    const deadline = Date.now() + timeoutMs;
    for (const [index, command] of req.commands.entries()) {
      say(`running: ${command}`);
      doing = `running "${command}"`;
      const outcome = await Promise.race([runLimited(ready.guest, {
        taskId, index, command, cwd: guestRepoDir(spec.name), env: { ...spec.env, ...secrets },
        memoryLimitBytes, pidsMax: spec.task.pidsMax, timeoutMs: Math.max(1, deadline - Date.now()),
        onOutput: opts.onOutput,
      }), interrupted]);
      const entry: CommandOutcome = {
        command, status: outcome.status, exitCode: outcome.exitCode, signal: outcome.signal,
        peakMemoryBytes: outcome.peakMemoryBytes, oomKills: outcome.oomKills,
        pidsLimitHits: outcome.pidsLimitHits, durationMs: Math.round(outcome.durationMs),
      };
      result.commands.push(entry);
      if (entry.peakMemoryBytes !== null) {
        result.peakMemoryBytes = Math.max(result.peakMemoryBytes ?? 0, entry.peakMemoryBytes);
      }
      if (entry.status !== 'succeeded') {
        result.message = redact(outcome.message ?? `"${command}" ${entry.status}`, secrets);
        break;
      }
    }
    timings.run = Math.round(performance.now() - runStart);
    const last = result.commands.at(-1)!;
    // A refused fork fails the command; the task says so in its message.
    result.status = (last.status === 'pids_limited' ? 'failed' : last.status) as TaskStatus;

    doing = 'extracting the diff';
    const diffStart = performance.now();
    const diff = await Promise.race([extractDiff(ready.guest, {
      repoDir: guestRepoDir(spec.name), baseCommit: result.baseCommit, maxBytes: DIFF_MAX_BYTES,
    }), interrupted]);
    result.diff = {
      patch: diff.tooLarge ? null : diff.patch.toString('utf8'),
      patchBytes: diff.tooLarge ? undefined : diff.patch,
      stats: { ...diff.stats, sizeBytes: diff.sizeBytes, tooLarge: diff.tooLarge },
      fromFailedTask: result.status !== 'succeeded',
    };
    timings.diff = Math.round(performance.now() - diffStart);
  } catch (err) {
    if (err instanceof CancelledError) {
      result.status = 'cancelled';
      result.message = `task ${taskId} cancelled while ${doing}: ${err.message}`;
      log.info({ vmId: result.vmId }, 'task cancelled');
      return result;
    }
    result.status = 'error';
    // A dead VM is the reason, whichever step noticed first: usually the agent's connection
    // closes a moment before QEMU's exit is seen.
    const dead = ready !== undefined && !(err instanceof PrewarmError && err.code === 'VM_DIED') &&
      await exitedWithin(ready.vm.processExited, VM_EXIT_GRACE_MS);
    result.message = redact(dead ? `${deathMessage(ready!.vm.id)}: ${errorMessage(err)}` : errorMessage(err), secrets);
    log.warn({ err: result.message }, 'task error');
  } finally {
    clearInterval(sampler);
    const destroyStart = performance.now();
    await ready?.guest.agent.close().catch(() => {});
    await ready?.vm.destroy().catch((err) => log.warn({ err: errorMessage(err) }, 'destroy failed'));
    timings.destroy = Math.round(performance.now() - destroyStart);
    result.finishedAt = new Date().toISOString();
  }
  return result;
}

/** A promise that rejects with the CancelledError when `signal` aborts (never without one). */
function rejectOnAbort(signal: AbortSignal | undefined): Promise<never> {
  const never = new Promise<never>((_resolve, reject) => {
    if (!signal) return;
    if (signal.aborted) return reject(cancelReason(signal));
    signal.addEventListener('abort', () => reject(cancelReason(signal)), { once: true });
  });
  never.catch(() => {});
  return never;
}

function exitedWithin(exited: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    exited.then(() => true, () => true),
    new Promise<boolean>((r) => { timer = setTimeout(() => r(false), ms); }),
  ]).finally(() => clearTimeout(timer));
}

/** Check out `commit` (a full id the host's mirror has) in the guest, shipping it from the
 * mirror when the snapshot does not have it (tasks usually have no network). Returns it. */
async function checkout(guest: Guest, spec: EnvSpec, commit: string): Promise<string> {
  const repo = HostRepo.forSpec(spec);
  const dir = guestRepoDir(spec.name);
  const has = await guest.run(`git cat-file -e ${commit}^{commit}`, { timeoutMs: 30_000, cwd: dir });
  if (has.exitCode !== 0) {
    const work = join(paths.tmp(), `bundle-${randomBytes(4).toString('hex')}`);
    await mkdir(work, { recursive: true });
    try {
      const bundle = join(work, 'repo.bundle');
      await repo.createBundle(commit, bundle);
      await guest.agent.writeFile('/tmp/prewarm-fetch.bundle', await readFile(bundle));
    } finally {
      await rm(work, { recursive: true, force: true });
    }
    const fetched = await guest.run('git fetch --quiet /tmp/prewarm-fetch.bundle prewarm && rm -f /tmp/prewarm-fetch.bundle',
      { timeoutMs: 5 * 60_000, cwd: dir });
    if (fetched.exitCode !== 0) {
      throw new PrewarmError('CHECKOUT_FAILED', `fetching ${commit.slice(0, 12)} into VM ${guest.vmId} failed: ${fetched.stderr.trim()}`);
    }
  }
  const out = await guest.run(`git checkout --quiet -B prewarm ${commit}`, { timeoutMs: 60_000, cwd: dir });
  if (out.exitCode !== 0) {
    throw new PrewarmError('CHECKOUT_FAILED', `checking out ${commit.slice(0, 12)} in VM ${guest.vmId} failed: ${out.stderr.trim()}`);
  }
  return commit;
}
