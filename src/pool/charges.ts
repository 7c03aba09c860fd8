import { residentMemory } from '../engine/proc.js';
import { existsSync, readFileSync } from 'node:fs';
import { readdir, readFile, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { isAlive, selfRecord } from '../engine/proc.js';
import { qemuAlive, readRecord } from '../engine/reaper.js';
import type { VmRecord } from '../engine/types.js';
import { paths } from '../util/paths.js';

/**
 * What each VM costs the host memory budget, read from the VM directories so that every
 * prewarm process sees the same numbers. A VM's directory may hold `budget.json`, written by
 * the process that owns the VM: what the VM is for and how much memory it has reserved.
 */
export const ROLE_FILE = 'budget.json';

/** `pool-filling`: being restored for a pool; `pool-ready`: idle in a pool (may be evicted);
 * `task`: running a task, reserving its tier / overcommit. */
/** 'prepare' is the VM of an environment's prepare; it is admitted as a task is. */
export type VmRole = 'task' | 'prepare' | 'pool-filling' | 'pool-ready';

export interface RoleFile {
  role: VmRole;
  reservedBytes: number;
  envName: string;
  snapshotId: string | null;
  /** The process that wrote the file; a reservation of a dead process counts for nothing. */
  owner: { pid: number; startTime: string };
  updatedAt: string;
}

export type RoleInput = Pick<RoleFile, 'role' | 'reservedBytes' | 'envName' | 'snapshotId'>;

export interface VmCharge {
  vmId: string;
  dir: string;
  /** Null while the VM is being created (admitted, not started yet). */
  record: VmRecord | null;
  role: RoleFile | null;
  rssBytes: number;
  /** Resident memory with pages shared between processes (clones of one snapshot share
   * its pages in the page cache) split among them: summed over VMs, a shared page counts
   * once. This, not RSS, is what the budget charges. */
  pssBytes: number;
  reservedBytes: number;
  /** max(pssBytes, reservedBytes). */
  chargeBytes: number;
}

export function vmDirOf(vmId: string): string {
  return join(paths.vms(), vmId);
}

export async function readRole(dir: string): Promise<RoleFile | null> {
  try {
    return JSON.parse(await readFile(join(dir, ROLE_FILE), 'utf8')) as RoleFile;
  } catch {
    return null;
  }
}

/** Atomically (re)write a VM's role file; the directory must exist. */
export async function writeRole(dir: string, input: RoleInput): Promise<void> {
  const role: RoleFile = { ...input, owner: selfRecord(), updatedAt: new Date().toISOString() };
  const tmp = join(dir, `.${ROLE_FILE}.${process.pid}.tmp`);
  await writeFile(tmp, JSON.stringify(role, null, 2));
  await rename(tmp, join(dir, ROLE_FILE));
}

/** Resident and proportional memory of a process (engine/proc.ts reads it). */
export const processMemory = residentMemory;

function ownerAlive(role: RoleFile | null): boolean {
  return role !== null && isAlive(role.owner.pid, role.owner.startTime);
}

/**
 * The charge of every VM on the host: running VMs by max(PSS, reservation), VMs still being
 * created by their reservation. VMs whose QEMU or owner is gone cost nothing (the reaper
 * removes them); VMs without a role file (a prepare, `prewarm vm boot`) by their PSS.
 */
export async function vmCharges(vmsDir: string = paths.vms()): Promise<VmCharge[]> {
  if (!existsSync(vmsDir)) return [];
  const charges: VmCharge[] = [];
  for (const vmId of await readdir(vmsDir)) {
    if (vmId.startsWith('.')) continue;
    const dir = join(vmsDir, vmId);
    const [record, role] = await Promise.all([readRecord(dir), readRole(dir)]);
    const reservedBytes = ownerAlive(role) ? role!.reservedBytes : 0;
    if (record && qemuAlive(record, dir)) {
      const mem = processMemory(record.qemuPid) ?? { rssBytes: 0, pssBytes: 0 };
      charges.push({ vmId, dir, record, role, ...mem, reservedBytes,
        chargeBytes: Math.max(mem.pssBytes, reservedBytes) });
    } else if (!record && reservedBytes > 0) {
      charges.push({ vmId, dir, record: null, role, rssBytes: 0, pssBytes: 0, reservedBytes,
        chargeBytes: reservedBytes });
    }
  }
  return charges;
}

/** An idle pool VM that a task may push out. */
export function isEvictable(charge: VmCharge): boolean {
  return charge.record !== null && charge.role?.role === 'pool-ready' && ownerAlive(charge.role);
}
