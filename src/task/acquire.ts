import { SnapshotStore } from '../snapshot/store.js';
import { verifyEngineSnapshotDir } from '../snapshot/hash-cache.js';
import { restoreVm } from '../engine/restore.js';
import type { Vm } from '../engine/vm.js';
import { freshenRestoredGuest, waitForGuest } from '../guest/ready.js';
import type { Guest } from '../guest/guest.js';
import type { EnvSpec } from '../env/spec.js';
import { throwIfCancelled } from '../util/errors.js';

const RESTORE_AGENT_TIMEOUT_MS = 30_000;

/** A restored VM whose agent answers, with its clock and entropy fixed. */
export interface ReadyVm {
  vm: Vm;
  guest: Guest;
  snapshotId: string;
  /** How long it took to get it: a restore, or a pool hand-out. */
  acquireMs: number;
  fromPool: boolean;
}

/**
 * Where task VMs come from: a restore by default, a warm pool when one is set. When `signal`
 * aborts, a source stops waiting (for memory, say) and rejects with a CancelledError; a VM it
 * was restoring is destroyed first.
 */
export type VmSource = (spec: EnvSpec, snapshotId: string, opts?: VmSourceCallOptions) => Promise<ReadyVm>;

export interface VmSourceCallOptions {
  signal?: AbortSignal;
  /** Told once, in words, when this VM has to wait (for host memory, say). */
  onWait?: (message: string) => void;
}

/** `vmId`: restore into this id (the memory budget admitted it and made its directory). */
export async function restoreReady(
  spec: EnvSpec, snapshotId: string, store?: SnapshotStore, opts: { vmId?: string; signal?: AbortSignal } = {},
): Promise<ReadyVm> {
  throwIfCancelled(opts.signal);
  const startedAt = performance.now();
  const snapshots = store ?? (await SnapshotStore.open());
  const dir = await snapshots.materialize(snapshotId);
  const manifest = await verifyEngineSnapshotDir(dir);
  const vm = await restoreVm(dir, manifest, { network: spec.network.tasks, detached: false, vmId: opts.vmId });
  try {
    const guest = await waitForGuest(vm, RESTORE_AGENT_TIMEOUT_MS);
    await freshenRestoredGuest(guest);
    throwIfCancelled(opts.signal);
    return { vm, guest, snapshotId, acquireMs: performance.now() - startedAt, fromPool: false };
  } catch (err) {
    await vm.destroy().catch(() => {});
    throw err;
  }
}
