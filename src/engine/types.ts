import type { VmShape } from './snapshot-format.js';

export type Accelerator = 'kvm' | 'tcg';

/** What a VM is made of. The same shape must be used to restore its snapshots. */
export interface VmConfig extends VmShape {
  kernelPath: string;
  initrdPath: string;
  /** The read-only base disk every overlay sits on. */
  baseDiskPath: string;
  baseImageDigest: string;
  /** Off: the NIC stays (restores need the same devices) but reaches nothing. */
  network: boolean;
  /** Detached VMs outlive the process that started them (`prewarm vm boot`); owned VMs die
   * with it and are reaped on the next start. */
  detached: boolean;
  labels?: Record<string, string>;
}

/** The states a VM handle goes through. A destroyed VM's handle can't be used again. */
export type VmState = 'starting' | 'running' | 'paused' | 'destroyed';

/** What `vm.json` in a VM's directory records, for `vm ls`, the reaper and other processes. */
export interface VmRecord {
  vmId: string;
  config: VmConfig;
  accel: Accelerator;
  qemuPid: number;
  qemuStartTime: string;
  /** The process that owns the VM, or null when detached. */
  owner: { pid: number; startTime: string } | null;
  createdAt: string;
  restoredFrom: string | null;
}
