import { mkdir, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { vmConfig } from '../engine/config.js';
import { Vm, newVmId } from '../engine/vm.js';
import { MemoryBudget } from '../pool/budget.js';
import { vmDirOf } from '../pool/charges.js';
import { snapshotVm } from '../engine/snapshot.js';
import { waitForGuest } from '../guest/ready.js';
import type { Guest } from '../guest/guest.js';
import { SnapshotStore } from '../snapshot/store.js';
import { tmpName } from '../snapshot/atomic-fs.js';
import { runLimited } from '../task/limits.js';
import { commandMemoryLimitBytes } from '../task/reserve.js';
import { PrepareError } from '../util/errors.js';
import { logger } from '../util/log.js';
import { createProgress } from '../util/progress.js';
import { withFileLock } from '../util/file-lock.js';
import { paths } from '../util/paths.js';
import { resolveEnv, type ResolvedEnv } from './inputs.js';
import { cloneIntoGuest, guestRepoDir, scrubSecrets } from './guest-setup.js';
import { resolveSecrets, resolveTier, type EnvSpec } from './spec.js';
import { findFresh } from './status.js';

const BOOT_TIMEOUT_MS = 120_000;
const SETUP_TIMEOUT_MS = 60 * 60_000;
const RUNTIME_TIMEOUT_MS = 20 * 60_000;
const OUTPUT_TAIL_LINES = 30;
/** A prepare waits this long for another prepare of the same environment (its setup may
 * take up to SETUP_TIMEOUT_MS, its runtime install RUNTIME_TIMEOUT_MS). */
const PREPARE_LOCK_WAIT_MS = 2 * 60 * 60_000;

export interface PrepareOptions {
  /** Build a new snapshot even when a fresh one exists. */
  force?: boolean;
  quiet?: boolean;
  /** Live output of the guest's commands (clone, runtime install, setup). */
  onOutput?: (chunk: Buffer) => void;
  /** The host memory budget the prepare VM is admitted against; default from the settings. */
  budget?: MemoryBudget;
}

export interface PrepareResult {
  envName: string;
  snapshotId: string;
  cacheHit: boolean;
  cacheKey: string;
  commit: string;
  agentsMd: string | null;
  timingsMs: Record<string, number>;
  sizes: { rawBytes: number; compressedBytes: number; ratio: number } | null;
}

/**
 * Prepare an environment: resolve its inputs, and unless a fresh snapshot exists, boot the
 * base image, clone the repository, install its runtime, run its setup script, scrub the
 * secrets, snapshot and store. A failure at any step stores nothing and destroys the VM.
 */
export async function prepareEnv(spec: EnvSpec, opts: PrepareOptions = {}): Promise<PrepareResult> {
  const log = logger({ envId: spec.name });
  const timings: Record<string, number> = {};
  const timed = async <T>(phase: string, fn: () => Promise<T>): Promise<T> => {
    const startedAt = performance.now();
    try {
      return await fn();
    } finally {
      timings[phase] = Math.round(performance.now() - startedAt);
    }
  };

  const secrets = resolveSecrets(spec);
  const env = await timed('resolve', () => resolveEnv(spec, { quiet: opts.quiet }));
  const store = await SnapshotStore.open();
  const cacheHit = async (): Promise<PrepareResult | null> => {
    const fresh = opts.force ? null : await findFresh(store, spec.name, env.cacheKey);
    if (!fresh) return null;
    log.info({ snapshotId: fresh.id }, 'prepare: cache hit');
    return {
      envName: spec.name, snapshotId: fresh.id, cacheHit: true, cacheKey: env.cacheKey,
      commit: env.commit, agentsMd: env.agentsMd, timingsMs: timings, sizes: null,
    };
  };
  const hit = await cacheHit();
  if (hit) return hit;

  // One build per environment at a time, across processes: a second prepare (another task
  // that found the snapshot stale, the CLI beside the service) waits, then finds the first
  // one's snapshot fresh instead of building the same thing again.
  return withFileLock(join(paths.locks(), `prepare-${spec.name}`), async () => {
    return (await cacheHit()) ?? build();
  }, {
    timeoutMs: PREPARE_LOCK_WAIT_MS, retryMs: 500,
    onWait: (pid) => {
      const message = `another prepare of ${spec.name} (pid ${pid ?? '?'}) is running; waiting for it`;
      log.info({ holderPid: pid }, message);
      if (!opts.quiet) process.stderr.write(`prewarm: ${message}\n`);
    },
  });

  async function build(): Promise<PrepareResult> {
    const progress = createProgress(`prepare ${spec.name}`, 6, opts.quiet);
    // Work happens in a temporary entry of the store's cache (tmpName carries our pid): a
    // prepare killed at any point leaves only that, which the next SnapshotStore.open() reaps;
    // and the finished engine directory becomes the local copy by a rename in one directory.
    const work = join(store.cacheDir, tmpName(`prepare-${spec.name}`));
    await mkdir(work, { recursive: true });
    let vm: Vm | undefined;
    try {
      const tier = resolveTier(spec.tier);
      progress.step('boot');
      // Admitted against the host memory budget like a task, for its whole tier (its setup
      // may use all of it); it waits for room or says how much is missing.
      const vmId = newVmId();
      await (opts.budget ?? new MemoryBudget()).admit({
        vmId, bytes: tier.memoryMiB * 2 ** 20, role: 'prepare', envName: spec.name, snapshotId: null,
        what: `the prepare of ${spec.name}`,
      }, { onWait: (w) => { if (!opts.quiet) process.stderr.write(`prewarm: ${w.message}; waiting\n`); } });
      vm = await timed('boot', async () => Vm.boot(vmConfig(env.image, tier, { network: spec.network.setup, detached: false }), { vmId })
        .catch(async (err: unknown) => {
          await rm(vmDirOf(vmId), { recursive: true, force: true });
          throw err;
        }));
      let guest = await timed('boot', () => waitForGuest(vm!, BOOT_TIMEOUT_MS));

      progress.step('clone');
      await timed('clone', async () => {
        const bundle = spec.repository.path ? join(work, 'repo.bundle') : null;
        if (bundle) await env.repo.createBundle(env.commit, bundle);
        await cloneIntoGuest(guest, env, bundle);
      });

      progress.step('runtime');
      await timed('runtime', () => installRuntimes(guest, env, tier.memoryMiB, opts.onOutput));

      progress.step('setup');
      await timed('setup', () => runSetup(guest, env, secrets, tier.memoryMiB, opts.onOutput));
      if (Object.keys(secrets).length > 0) {
        guest = await timed('scrub', () => scrubSecrets(guest, vm!.files.agentSocket, vm!.files.serialLog));
      }

      progress.step('snapshot');
      const engineDir = join(work, 'engine');
      await timed('snapshot', async () => {
        await guest.prepareForSnapshot();
        await guest.agent.close();
        await snapshotVm(vm!, engineDir);
      });

      progress.step('compress');
      const stored = await timed('compress', () => store.put(engineDir, {
        envName: spec.name, cacheKey: env.cacheKey, inputs: { ...env.inputs }, agentsMd: env.agentsMd,
      }));
      // The uncompressed copy is exactly what restores map: keep it as the local cache.
      await rename(engineDir, join(store.cacheDir, stored.id)).catch(() => rm(engineDir, { recursive: true, force: true }));
      progress.done();

      const rawBytes = stored.rawSizeBytes;
      const compressedBytes = stored.compressedSizeBytes;
      log.info({ snapshotId: stored.id, timings }, 'prepare: snapshot stored');
      return {
        envName: spec.name, snapshotId: stored.id, cacheHit: false, cacheKey: env.cacheKey,
        commit: env.commit, agentsMd: env.agentsMd, timingsMs: timings,
        sizes: { rawBytes, compressedBytes, ratio: compressedBytes > 0 ? rawBytes / compressedBytes : 0 },
      };
    } catch (err) {
      progress.done();
      throw err;
    } finally {
      await vm?.destroy().catch(() => {});
      await rm(work, { recursive: true, force: true });
    }
  }
}

/** Setup commands get the whole tier (less the guest's own share) and no process limit to
 * speak of; tasks get the spec's limits. */
const SETUP_PIDS_MAX = 32_768;


async function installRuntimes(guest: Guest, env: ResolvedEnv, memoryMiB: number, onOutput?: (chunk: Buffer) => void): Promise<void> {
  const scripts: [string, string][] = [];
  if (env.runtimes.node) scripts.push([`Node.js ${env.runtimes.node.version}`, env.runtimes.node.installScript]);
  if (env.runtimes.python) {
    scripts.push([`Python ${env.runtimes.python.version}`,
      `apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q ${env.runtimes.python.aptPackages.join(' ')}`]);
  }
  for (const [what, script] of scripts) {
    const result = await runLimited(guest, {
      taskId: 'prepare', index: 0, command: script, cwd: '/', env: {},
      memoryLimitBytes: commandMemoryLimitBytes(memoryMiB), pidsMax: SETUP_PIDS_MAX, timeoutMs: RUNTIME_TIMEOUT_MS, onOutput,
    });
    if (result.exitCode !== 0) {
      throw new PrepareError(`environment ${env.spec.name}: installing ${what} in VM ${guest.vmId} ` +
        `failed (${result.status}, exit ${result.exitCode}); is network.setup on? Last output:\n` +
        tail(result.outputTail), { code: 'RUNTIME_INSTALL_FAILED' });
    }
  }
}

async function runSetup(
  guest: Guest, env: ResolvedEnv, secrets: Record<string, string>, memoryMiB: number,
  onOutput?: (chunk: Buffer) => void,
): Promise<void> {
  const result = await runLimited(guest, {
    taskId: 'prepare', index: 1, command: env.spec.setup, cwd: guestRepoDir(env.spec.name),
    env: { ...env.spec.env, ...secrets }, memoryLimitBytes: commandMemoryLimitBytes(memoryMiB), pidsMax: SETUP_PIDS_MAX,
    timeoutMs: SETUP_TIMEOUT_MS, onOutput,
  });
  if (result.status !== 'succeeded') {
    throw new PrepareError(`environment ${env.spec.name}: the setup script ${describe(result)} in VM ` +
      `${guest.vmId}; no snapshot was stored. Fix the setup script and prepare again. Last output:\n` +
      tail(redact(result.outputTail, secrets)), { code: 'SETUP_FAILED' });
  }
}

function describe(result: { status: string; exitCode: number | null }): string {
  if (result.status === 'oom_killed') return 'ran out of memory (raise the tier)';
  if (result.status === 'timed_out') return `timed out after ${SETUP_TIMEOUT_MS / 60_000} minutes`;
  return `failed with exit code ${result.exitCode}`;
}

function tail(text: string): string {
  return text.trimEnd().split('\n').slice(-OUTPUT_TAIL_LINES).join('\n');
}

/** Secret values never reach a message or a log. */
export function redact(text: string, secrets: Record<string, string>): string {
  let out = text;
  for (const value of Object.values(secrets)) if (value.length >= 4) out = out.split(value).join('***');
  return out;
}

