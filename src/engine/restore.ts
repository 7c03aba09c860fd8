import { imageByDigest } from '../image/build.js';
import { vmConfig } from './config.js';
import { Vm } from './vm.js';
import type { EngineSnapshotManifest } from './snapshot-format.js';

/** Restore a verified engine snapshot directory into a new VM of the same shape. */
export async function restoreVm(
  snapshotDir: string,
  manifest: EngineSnapshotManifest,
  opts: { network: boolean; detached: boolean; vmId?: string },
): Promise<Vm> {
  const image = await imageByDigest(manifest.baseImage.digest);
  const config = vmConfig(
    image,
    { memoryMiB: manifest.shape.memoryMiB, vcpus: manifest.shape.vcpus, diskGiB: manifest.shape.diskSizeBytes / 2 ** 30 },
    { network: opts.network, detached: opts.detached },
  );
  return Vm.restore(snapshotDir, config, { accel: manifest.accel, vmId: opts.vmId });
}
