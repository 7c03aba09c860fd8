import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { openState } from '../state/db.js';
import { WarmPools } from '../pool/pool.js';
import { dirname, join } from 'node:path';
import { materializeExample } from '../env/example.js';
import { loadSpec, resolveTier } from '../env/spec.js';
import { prepareEnv } from '../env/prepare.js';
import { vmConfig } from '../engine/config.js';
import { Vm } from '../engine/vm.js';
import { guestRamSplit } from '../engine/proc.js';
import { chooseAccelerator } from '../engine/accel.js';
import { waitForGuest } from '../guest/ready.js';
import { buildImage } from '../image/build.js';
import { SnapshotStore } from '../snapshot/store.js';
import { restoreReady, type ReadyVm } from '../task/acquire.js';
import { describeMachine, hostAvailableBytes, pssBytes, type Machine } from './machine.js';
import { measureLoadvm } from './loadvm.js';
import { measureApiOverhead } from './api.js';
import { percentile, series, timeMs, type Series } from './stats.js';
import { latencySvg } from './svg.js';

export interface BenchOptions {
  quick?: boolean;
  /** Restore (and pool) rounds; at least 20 unless quick. */
  rounds?: number;
  jsonPath?: string;
  say?: (line: string) => void;
}

export interface BenchReport {
  startedAt: string;
  machine: Machine;
  accel: string;
  env: string;
  rounds: number;
  series: Record<string, Series>;
  prepare: { timingsMs: Record<string, number>; coldStartMs: number };
  snapshot: { createMs: number; rawBytes: number; compressedBytes: number; ratio: number;
    restoreFromStoreMs: number; restoreFromCacheMs: number };
  memory: { tierBytes: number; idleCloneRssBytes: number; idleClonePssBytes: number; guestUsedBytes: number;
    oneCloneHostBytes: number; tenClonesHostBytes: number; clones: number; returnAfterDestroyMs: number[];
    /** Where the clones' memory is: the guest RAM mapping against QEMU's own, summed over
     * all clones; private = not shared with any other process. */
    split: { oneClone: CloneSplit; allClones: CloneSplit } };
  density: { budgetBytes: number; perCloneBytes: number; clonesInBudget: number };
  /** Task submission to first command running: the HTTP service against the library. */
  api: { overheadP50Ms: number } | null;
  ratios: Record<string, number>;
}

interface CloneSplit { guestRamPssBytes: number; guestRamPrivateBytes: number; vmmPssBytes: number; vmmPrivateBytes: number }

function cloneSplit(clones: ReadyVm[]): CloneSplit {
  const sum: CloneSplit = { guestRamPssBytes: 0, guestRamPrivateBytes: 0, vmmPssBytes: 0, vmmPrivateBytes: 0 };
  for (const r of clones) {
    const split = guestRamSplit(r.vm.qemuPid!, join(r.vm.restoredFrom!, 'memory.raw'));
    if (!split) throw new Error(`clone ${r.vm.id} is gone: its memory cannot be read`);
    sum.guestRamPssBytes += split.guestRam.pssBytes;
    sum.guestRamPrivateBytes += split.guestRam.privateBytes;
    sum.vmmPssBytes += split.vmm.pssBytes;
    sum.vmmPrivateBytes += split.vmm.privateBytes;
  }
  return sum;
}

async function firstCommand(ready: ReadyVm): Promise<void> {
  const result = await ready.guest.agent.exec({ path: '/bin/true', timeoutMs: 30_000 });
  if (result.exitCode !== 0) throw new Error(`first command failed in ${ready.vm.id}`);
}

async function destroy(ready: ReadyVm): Promise<void> {
  await ready.guest.agent.close();
  await ready.vm.destroy();
}

/** A pool of one for the environment, refilled between rounds; each round times take() and
 * the first command. The pool's previous target is put back afterwards. */
async function measurePool(specPath: string, envName: string, snapshotId: string, rounds: number): Promise<number[]> {
  const state = openState();
  const previous = await state.pools.get(envName);
  await state.environments.upsert({ name: envName, specPath, specYaml: await readFile(specPath, 'utf8') });
  await state.pools.set(envName, 1);
  const pools = await WarmPools.start({ state });
  const samples: number[] = [];
  try {
    for (let i = 0; i < rounds; i++) {
      await pools.whenFull({ envName, timeoutMs: 180_000 });
      const startedAt = performance.now();
      const ready = await pools.take(envName, snapshotId);
      if (!ready) throw new Error(`the pool of ${envName} had no VM of ${snapshotId}`);
      await firstCommand(ready);
      samples.push(performance.now() - startedAt);
      await destroy(ready);
    }
    return samples;
  } finally {
    await pools.stop();
    if (previous) await state.pools.set(envName, previous.targetSize);
    else await state.pools.remove(envName);
    state.close();
  }
}

/**
 * One run, one environment (the bundled example), every figure prewarm claims: cold start,
 * restore, QEMU's loadvm, snapshot sizes, idle memory, memory return, density. Each VM it
 * makes is destroyed before it returns.
 */
export async function runBench(opts: BenchOptions = {}): Promise<BenchReport> {
  const say = opts.say ?? (() => {});
  const rounds = opts.rounds ?? (opts.quick ? 8 : 20);
  const coldRounds = opts.quick ? 2 : 3;
  const loadvmRounds = opts.quick ? 3 : 5;
  const clones = opts.quick ? 5 : 10;
  const startedAt = new Date().toISOString();

  const image = await buildImage({ quiet: true });
  const specPath = await materializeExample();
  const spec = await loadSpec(specPath);
  const tier = resolveTier(spec.tier);
  const config = vmConfig(image, tier, { network: false, detached: false });
  const accel = await chooseAccelerator(config);

  say(`cold start: a forced prepare of ${spec.name} (boot, clone, npm ci, snapshot)`);
  const prepared = await prepareEnv(spec, { force: true, quiet: true });
  const t = prepared.timingsMs;
  const coldStartMs = (t.boot ?? 0) + (t.clone ?? 0) + (t.runtime ?? 0) + (t.setup ?? 0);
  const store = await SnapshotStore.open();
  const stored = await store.get(prepared.snapshotId);

  say(`cold boot to agent ready, ${coldRounds} rounds`);
  const coldBoot: number[] = [];
  for (let i = 0; i < coldRounds; i++) {
    const [ms, vm] = await timeMs(async () => {
      const booted = await Vm.boot(config);
      const guest = await waitForGuest(booted, 180_000);
      await guest.agent.close();
      return booted;
    });
    coldBoot.push(ms);
    await vm.destroy();
  }

  say('restore from the compressed store (local copy removed first)');
  await rm(join(store.cacheDir, prepared.snapshotId), { recursive: true, force: true });
  const [fromStoreMs, first] = await timeMs(() => restoreReady(spec, prepared.snapshotId, store));
  await destroy(first);
  const [fromCacheMs, second] = await timeMs(() => restoreReady(spec, prepared.snapshotId, store));
  await destroy(second);

  say(`restore to first command, ${rounds} rounds`);
  const restore: number[] = [];
  const toFirst: number[] = [];
  const returnMs: number[] = [];
  for (let i = 0; i < rounds; i++) {
    const baseline = hostAvailableBytes();
    const started = performance.now();
    const ready = await restoreReady(spec, prepared.snapshotId, store);
    restore.push(ready.acquireMs);
    await firstCommand(ready);
    toFirst.push(performance.now() - started);
    const destroyedAt = performance.now();
    await destroy(ready);
    while (hostAvailableBytes() < baseline - 64 * 2 ** 20 && performance.now() - destroyedAt < 10_000) {
      await new Promise((r) => setTimeout(r, 10));
    }
    returnMs.push(performance.now() - destroyedAt);
  }

  say(`warm pool hand-out to first command, ${rounds} rounds`);
  const pool = await measurePool(specPath, spec.name, prepared.snapshotId, rounds).catch((err: Error) => {
    say(`warm pool not measured: ${err.message}`);
    return [] as number[];
  });

  say(`task submission to first command, library and HTTP API alternating, ${rounds} rounds each`);
  const api = await measureApiOverhead(spec, specPath, rounds).catch((err: Error) => {
    say(`API overhead not measured: ${err.message}`);
    return null;
  });

  say(`idle memory: 1 clone, then ${clones} clones`);
  // Host memory is counted as the clones' proportional set size (shared snapshot pages split
  // among the processes that map them): MemAvailable deltas drown in whatever else runs.
  const one = await restoreReady(spec, prepared.snapshotId, store);
  await new Promise((r) => setTimeout(r, 2000));
  const rss = one.vm.hostMemory()?.rssBytes ?? 0;
  const pss = pssBytes(one.vm.qemuPid!);
  const oneCloneHostBytes = pss;
  const oneSplit = cloneSplit([one]);
  const used = await one.guest.run("awk '/MemTotal/{t=$2}/MemAvailable/{a=$2}END{print (t-a)*1024}' /proc/meminfo", { timeoutMs: 30_000 });
  const many: ReadyVm[] = [one];
  for (let i = 1; i < clones; i++) many.push(await restoreReady(spec, prepared.snapshotId, store));
  await new Promise((r) => setTimeout(r, 2000));
  const tenClonesHostBytes = many.reduce((sum, r) => sum + pssBytes(r.vm.qemuPid!), 0);
  const allSplit = cloneSplit(many);
  for (const ready of many) await destroy(ready);

  say(`QEMU savevm/loadvm baseline, ${loadvmRounds} rounds`);
  const loadvm = await measureLoadvm(config, accel, loadvmRounds);

  const perCloneBytes = Math.max(1, (tenClonesHostBytes - oneCloneHostBytes) / (clones - 1));
  const budgetBytes = Number(process.env.PREWARM_MEMORY_BUDGET_MIB ?? 0) * 2 ** 20 ||
    Math.max(0, (await describeMachine()).memoryBytes * 0.75 - 2 ** 30);
  const s = {
    coldBoot: series('cold boot to agent', coldBoot),
    restore: series('restore to ready agent', restore),
    restoreToFirstCommand: series('restore to first command', toFirst),
    loadvm: series('QEMU loadvm to first command', loadvm),
    memoryReturn: series('host memory back after destroy', returnMs),
    ...(pool.length > 0 ? { pool: series('pool hand-out to first command', pool) } : {}),
    ...(api ? {
      submitLibrary: series('submit to first command (library)', api.library),
      submitApi: series('submit to first command (HTTP API)', api.api),
      submitApiStored: series('submit to first output stored (API)', api.apiStored),
    } : {}),
  };
  const report: BenchReport = {
    startedAt, machine: await describeMachine(), accel, env: spec.name, rounds, series: s,
    prepare: { timingsMs: t, coldStartMs },
    snapshot: {
      createMs: (t.snapshot ?? 0) + (t.compress ?? 0), rawBytes: stored.rawSizeBytes,
      compressedBytes: stored.compressedSizeBytes, ratio: stored.rawSizeBytes / stored.compressedSizeBytes,
      restoreFromStoreMs: fromStoreMs, restoreFromCacheMs: fromCacheMs,
    },
    memory: {
      tierBytes: tier.memoryMiB * 2 ** 20, idleCloneRssBytes: rss, idleClonePssBytes: pss,
      guestUsedBytes: Number(used.stdout.trim()), oneCloneHostBytes, tenClonesHostBytes, clones,
      returnAfterDestroyMs: returnMs, split: { oneClone: oneSplit, allClones: allSplit },
    },
    density: { budgetBytes, perCloneBytes, clonesInBudget: Math.floor(budgetBytes / perCloneBytes) },
    api: s.submitApi && s.submitLibrary ? { overheadP50Ms: s.submitApi.p50 - s.submitLibrary.p50 } : null,
    ratios: {
      coldStartOverRestoreToFirstCommand: coldStartMs / s.restoreToFirstCommand.p50,
      loadvmOverRestoreToFirstCommand: s.loadvm.p50 / s.restoreToFirstCommand.p50,
      clonesMemoryOverOne: tenClonesHostBytes / Math.max(1, oneCloneHostBytes),
      ...(pool.length > 0 ? { restoreToFirstCommandOverPool: s.restoreToFirstCommand.p50 / percentile(pool, 50) } : {}),
      ...(s.submitApi && s.submitLibrary ? { apiOverLibrary: s.submitApi.p50 / s.submitLibrary.p50 } : {}),
    },
  };
  if (opts.jsonPath) {
    await mkdir(dirname(opts.jsonPath), { recursive: true });
    await writeFile(opts.jsonPath, JSON.stringify(report, null, 2));
    await writeFile(opts.jsonPath.replace(/\.json$/, '') + '.svg',
      latencySvg(`prewarm bench (${accel}, ${report.machine.cores} cores)`, Object.values(s)));
  }
  return report;
}
