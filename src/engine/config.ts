import type { Image } from '../image/build.js';
import type { VmConfig } from './types.js';

/** The root filesystem is this big; an overlay is never smaller than its base. */
const MIN_DISK_BYTES = 8 * 2 ** 30;

export interface VmSize {
  memoryMiB: number;
  vcpus: number;
  diskGiB: number;
}

export function vmConfig(image: Image, size: VmSize, opts: { network: boolean; detached: boolean }): VmConfig {
  return {
    kernelPath: image.kernelPath,
    initrdPath: image.initrdPath,
    baseDiskPath: image.diskPath,
    baseImageDigest: image.digest,
    memoryMiB: size.memoryMiB,
    vcpus: size.vcpus,
    diskSizeBytes: Math.max(MIN_DISK_BYTES, size.diskGiB * 2 ** 30),
    network: opts.network,
    detached: opts.detached,
  };
}
