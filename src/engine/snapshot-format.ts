/**
 * The on-disk form of one engine snapshot: a directory that a restore can map directly.
 *
 *   snapshot.json  this manifest
 *   memory.raw     the guest's RAM (sparse; restores map it privately, copy-on-write)
 *   state.bin      the device state migration stream (x-ignore-shared: RAM is not in it)
 *   disk.qcow2     the disk overlay at the moment of the snapshot; its backing file is the
 *                  base image named by `baseImage`
 *
 * The manifest binds the three files together by size and sha256, so a restore refuses a
 * directory whose files do not belong together before any VM starts.
 */
export const SNAPSHOT_MANIFEST = 'snapshot.json';
export const SNAPSHOT_FILES = ['memory.raw', 'state.bin', 'disk.qcow2'] as const;
export type SnapshotFileName = (typeof SNAPSHOT_FILES)[number];

export interface FileDigest {
  sizeBytes: number;
  sha256: string;
}

/** What the restored VM must look like: the same devices and memory as the snapshot's. */
export interface VmShape {
  memoryMiB: number;
  vcpus: number;
  diskSizeBytes: number;
}

export interface EngineSnapshotManifest {
  formatVersion: 1;
  engine: { name: 'qemu'; version: string };
  createdAt: string;
  sourceVmId: string;
  shape: VmShape;
  /** Device state from TCG does not load under KVM and back. */
  accel: 'kvm' | 'tcg';
  /** The base disk the overlay sits on: digest of the image, path on this host. */
  baseImage: { digest: string; diskPath: string };
  files: Record<SnapshotFileName, FileDigest>;
}
