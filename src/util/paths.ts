import { homedir } from 'node:os';
import { join } from 'node:path';

/**
 * prewarm's data directory: PREWARM_HOME, else ~/.local/share/prewarm.
 *
 *   images/<digest>/      kernel, initramfs, base disk, manifest.json
 *   vms/<vmId>/           one running VM: sockets, overlay, memory file, owner.json
 *   snapshots/<id>/       the store: manifest.json, memory.zst, disk.qcow2.zst, state.zst
 *   cache/snapshots/<id>/ decompressed copies that restores map
 *   state.db              SQLite
 */
export function prewarmHome(): string {
  return process.env.PREWARM_HOME ?? join(homedir(), '.local', 'share', 'prewarm');
}

export const paths = {
  images: () => join(prewarmHome(), 'images'),
  vms: () => join(prewarmHome(), 'vms'),
  snapshots: () => join(prewarmHome(), 'snapshots'),
  snapshotCache: () => join(prewarmHome(), 'cache', 'snapshots'),
  hostProbes: () => join(prewarmHome(), 'cache', 'host'),
  database: () => join(prewarmHome(), 'state.db'),
  tmp: () => join(prewarmHome(), 'tmp'),
  /** Cross-process locks (a file per lock; a dead holder's file is free at once). */
  locks: () => join(prewarmHome(), 'locks'),
};
