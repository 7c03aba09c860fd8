import { existsSync } from 'node:fs';
import { readdir, readFile, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { paths } from '../util/paths.js';
import { logger } from '../util/log.js';
import { isAlive, processCmdline } from './proc.js';
import type { VmRecord } from './types.js';

/** A VM directory younger than this without a record is still being created. */
const UNRECORDED_GRACE_MS = 60_000;

export interface VmListing extends VmRecord {
  dir: string;
  alive: boolean;
}

export async function listVms(): Promise<VmListing[]> {
  if (!existsSync(paths.vms())) return [];
  const listings: VmListing[] = [];
  for (const id of await readdir(paths.vms())) {
    const dir = join(paths.vms(), id);
    const record = await readRecord(dir);
    if (record) listings.push({ ...record, dir, alive: qemuAlive(record, dir) });
  }
  return listings.sort((a, b) => a.createdAt.localeCompare(b.createdAt));
}

export async function readRecord(dir: string): Promise<VmRecord | null> {
  try {
    return JSON.parse(await readFile(join(dir, 'vm.json'), 'utf8')) as VmRecord;
  } catch {
    return null;
  }
}

/** The QEMU process of this record is running (same pid, same start, our VM's files). */
export function qemuAlive(record: VmRecord, dir: string): boolean {
  return isAlive(record.qemuPid, record.qemuStartTime) && processCmdline(record.qemuPid).includes(dir);
}

/** Kill a VM's QEMU (if it still runs) and remove its directory. */
export async function killVm(record: VmRecord, dir: string): Promise<void> {
  if (qemuAlive(record, dir)) {
    process.kill(record.qemuPid, 'SIGKILL');
    // A large guest takes a moment to unmap; wait for the process to be gone for real.
    for (let i = 0; i < 500 && isAlive(record.qemuPid, record.qemuStartTime); i++) {
      await new Promise((r) => setTimeout(r, 20));
    }
  }
  await rm(dir, { recursive: true, force: true });
}

/**
 * Remove what crashed or killed prewarm processes left behind: VMs whose owner is gone,
 * VMs whose QEMU is gone, and directories that never got a record. Detached VMs with a
 * running QEMU are kept. Returns the ids it removed.
 */
export async function reapVms(): Promise<string[]> {
  if (!existsSync(paths.vms())) return [];
  const log = logger({ part: 'reaper' });
  const reaped: string[] = [];
  for (const id of await readdir(paths.vms())) {
    const dir = join(paths.vms(), id);
    const record = await readRecord(dir);
    if (!record) {
      const ageMs = Date.now() - (await stat(dir).catch(() => null))?.mtimeMs!;
      if (ageMs > UNRECORDED_GRACE_MS) {
        await rm(dir, { recursive: true, force: true });
        reaped.push(id);
      }
      continue;
    }
    const ownerGone = record.owner !== null && !isAlive(record.owner.pid, record.owner.startTime);
    if (ownerGone || !qemuAlive(record, dir)) {
      await killVm(record, dir);
      reaped.push(id);
      log.info({ vmId: id, reason: ownerGone ? 'owner gone' : 'qemu gone' }, 'reaped leftover vm');
    }
  }
  return reaped;
}
