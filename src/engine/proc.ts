import { readFileSync } from 'node:fs';

/** Host process probes, by pid. Start times tell a live process from a reused pid. */

export function processStartTime(pid: number): string | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Field 22 (starttime) comes after the command name, which may contain spaces.
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19] ?? null;
  } catch {
    return null;
  }
}

export function processCmdline(pid: number): string {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').replace(/\0/g, ' ');
  } catch {
    return '';
  }
}

/** Running (not a zombie), and when `startTime` is given, the same process as then. */
export function isAlive(pid: number, startTime?: string): boolean {
  let stat: string;
  try {
    stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return false;
  }
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  if (fields[0] === 'Z') return false;
  return startTime === undefined || fields[19] === startTime;
}

/** Resident memory of a process: total, its proportional share (shared pages split among
 * the processes mapping them), and the part no other process shares. */
export function residentMemory(pid: number): { rssBytes: number; pssBytes: number; privateBytes: number } | null {
  try {
    const text = readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8');
    const kib = (field: string) => Number(new RegExp(`^${field}:\\s+(\\d+)`, 'm').exec(text)?.[1] ?? 0);
    return {
      rssBytes: kib('Rss') * 1024,
      pssBytes: kib('Pss') * 1024,
      privateBytes: (kib('Private_Clean') + kib('Private_Dirty')) * 1024,
    };
  } catch {
    return null;
  }
}

export interface MappingMemory { rssBytes: number; pssBytes: number; privateBytes: number }

/**
 * A QEMU process's resident memory split in two: the mapping of the guest's RAM file
 * (`guestRamPath`; in a restored clone its private part is the pages the guest wrote since
 * the restore) and everything else (QEMU itself: heap, libraries, under TCG the translated
 * code). Null when the process is gone.
 */
export function guestRamSplit(pid: number, guestRamPath: string): { guestRam: MappingMemory; vmm: MappingMemory } | null {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/smaps`, 'utf8');
  } catch {
    return null;
  }
  const guestRam = { rssBytes: 0, pssBytes: 0, privateBytes: 0 };
  const vmm = { rssBytes: 0, pssBytes: 0, privateBytes: 0 };
  let into = vmm;
  for (const line of text.split('\n')) {
    // A mapping's header: "start-end perms offset dev inode [path]".
    const header = /^[0-9a-f]+-[0-9a-f]+ \S+ \S+ \S+ \d+\s*(.*)$/.exec(line);
    if (header) {
      into = header[1] === guestRamPath ? guestRam : vmm;
      continue;
    }
    const field = /^(Rss|Pss|Private_Clean|Private_Dirty):\s+(\d+) kB/.exec(line);
    if (!field) continue;
    const bytes = Number(field[2]) * 1024;
    if (field[1] === 'Rss') into.rssBytes += bytes;
    else if (field[1] === 'Pss') into.pssBytes += bytes;
    else into.privateBytes += bytes;
  }
  return { guestRam, vmm };
}

export function selfRecord(): { pid: number; startTime: string } {
  return { pid: process.pid, startTime: processStartTime(process.pid) ?? '' };
}
