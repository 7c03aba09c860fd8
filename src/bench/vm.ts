import { mkdir, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { buildImage } from '../image/build.js';
import { vmConfig } from '../engine/config.js';
import { Vm } from '../engine/vm.js';
import { snapshotVm } from '../engine/snapshot.js';
import { restoreVm } from '../engine/restore.js';
import { freshenRestoredGuest, waitForGuest } from '../guest/ready.js';
import { paths } from '../util/paths.js';
import { describeMachine, type Machine } from './machine.js';
import { series, type Series } from './stats.js';

export interface VmBenchReport {
  startedAt: string;
  machine: Machine;
  accel: string;
  rounds: number;
  memoryMiB: number;
  series: Record<'coldBoot' | 'saveState' | 'snapshot' | 'restore', Series>;
  /** Per round: device state bytes and the memory file's allocated bytes. */
  stateBytes: number[];
  memoryAllocatedBytes: number[];
}

/**
 * The engine alone, as issue-level figures: each round boots the base image to a working
 * agent, snapshots it, restores it to a working agent (clock and entropy fixed), and
 * destroys everything.
 */
export async function runVmBench(rounds: number, say: (line: string) => void = () => {}): Promise<VmBenchReport> {
  const startedAt = new Date().toISOString();
  const image = await buildImage({ quiet: true });
  const memoryMiB = 1024;
  const config = vmConfig(image, { memoryMiB, vcpus: 2, diskGiB: 8 }, { network: false, detached: false });
  const work = join(paths.tmp(), `bench-vm-${process.pid}`);
  await mkdir(work, { recursive: true });
  const boot: number[] = [];
  const snap: number[] = [];
  const save: number[] = [];
  const restore: number[] = [];
  const stateBytes: number[] = [];
  const memoryAllocatedBytes: number[] = [];
  let accel = '';
  try {
    for (let i = 0; i < rounds; i++) {
      let t = performance.now();
      const vm = await Vm.boot(config);
      accel = vm.accel;
      const guest = await waitForGuest(vm, 180_000);
      boot.push(performance.now() - t);
      await guest.prepareForSnapshot();
      await guest.agent.close();

      const dir = join(work, `snap-${i}`);
      t = performance.now();
      const manifest = await snapshotVm(vm, dir);
      snap.push(performance.now() - t);
      save.push(manifest.timings.saveMs);
      stateBytes.push(manifest.files['state.bin'].sizeBytes);
      const du = await stat(join(dir, 'memory.raw'));
      memoryAllocatedBytes.push(du.blocks * 512);

      t = performance.now();
      const clone = await restoreVm(dir, manifest, { network: false, detached: false });
      const cloneGuest = await waitForGuest(clone, 60_000);
      await freshenRestoredGuest(cloneGuest);
      restore.push(performance.now() - t);
      await cloneGuest.agent.close();
      await clone.destroy();
      await rm(dir, { recursive: true, force: true });
      say(`round ${i + 1}/${rounds}: boot ${Math.round(boot[i])} ms, snapshot ${Math.round(snap[i])} ms, ` +
        `restore ${Math.round(restore[i])} ms`);
    }
  } finally {
    await rm(work, { recursive: true, force: true });
  }
  return {
    startedAt, machine: await describeMachine(), accel, rounds, memoryMiB,
    series: {
      coldBoot: series('cold boot to agent', boot),
      saveState: series('save device state (pause, stream)', save),
      snapshot: series('whole snapshot (+ sha256 of files)', snap),
      restore: series('restore to agent, clock, entropy', restore),
    },
    stateBytes, memoryAllocatedBytes,
  };
}
