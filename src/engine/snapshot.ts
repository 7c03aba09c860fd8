import { mkdir, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { execa } from 'execa';
import { digestFile } from '../snapshot/hash-cache.js';
import { step } from '../util/log.js';
import { VmError } from '../util/errors.js';
import { qemuVersion } from './qemu-binary.js';
import type { Vm } from './vm.js';
import {
  SNAPSHOT_FILES, SNAPSHOT_MANIFEST, type EngineSnapshotManifest, type SnapshotFileName,
} from './snapshot-format.js';

export interface SnapshotTimings {
  saveMs: number;
  totalMs: number;
}

/**
 * Freeze a booted VM into `destDir`: device state streamed (RAM is skipped, it is already
 * in the memory file), then QEMU stops and its memory file and overlay move into the
 * snapshot. The VM is gone afterwards. The directory appears whole or not at all. The
 * caller flushes the guest's disks first.
 */
export async function snapshotVm(vm: Vm, destDir: string): Promise<EngineSnapshotManifest & { timings: SnapshotTimings }> {
  const startedAt = performance.now();
  const tmp = `${destDir}.tmp-${randomBytes(4).toString('hex')}`;
  await mkdir(tmp, { recursive: true });
  try {
    const saveStart = performance.now();
    await step(vm.log, 'save-device-state', () => vm.saveDeviceState(join(tmp, 'state.bin')));
    const saveMs = performance.now() - saveStart;
    await step(vm.log, 'stop', () => vm.stopForSnapshot());

    await step(vm.log, 'move-files', async () => {
      await moveFile(vm.files.memory, join(tmp, 'memory.raw'));
      await moveFile(vm.files.overlay, join(tmp, 'disk.qcow2'));
    });

    const files = {} as EngineSnapshotManifest['files'];
    await step(vm.log, 'hash', () => Promise.all(SNAPSHOT_FILES.map(async (name: SnapshotFileName) => {
      // digestFile also records the hash in the directory's hash cache, so the store's
      // verification of this directory right after (put) does not read 2 GiB again.
      files[name] = await digestFile(join(tmp, name));
    })));
    const manifest: EngineSnapshotManifest = {
      formatVersion: 1,
      engine: { name: 'qemu', version: await qemuVersion() },
      createdAt: new Date().toISOString(),
      sourceVmId: vm.id,
      shape: { memoryMiB: vm.config.memoryMiB, vcpus: vm.config.vcpus, diskSizeBytes: vm.config.diskSizeBytes },
      accel: vm.accel,
      baseImage: { digest: vm.config.baseImageDigest, diskPath: vm.config.baseDiskPath },
      files,
    };
    await writeFile(join(tmp, SNAPSHOT_MANIFEST), JSON.stringify(manifest, null, 2));
    await rm(destDir, { recursive: true, force: true });
    await rename(tmp, destDir);
    await vm.destroy();
    return { ...manifest, timings: { saveMs, totalMs: performance.now() - startedAt } };
  } catch (err) {
    await rm(tmp, { recursive: true, force: true });
    await vm.destroy().catch(() => {});
    throw err instanceof VmError ? err : new VmError(vm.id, `snapshot to ${destDir} failed: ${(err as Error).message}`, { cause: err });
  }
}

/** Rename, or copy keeping holes when the destination is on another filesystem. */
async function moveFile(from: string, to: string): Promise<void> {
  try {
    await rename(from, to);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EXDEV') throw err;
    await execa('cp', ['--sparse=always', from, to]);
    await rm(from, { force: true });
  }
}

