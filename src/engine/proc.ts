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

export function selfRecord(): { pid: number; startTime: string } {
  return { pid: process.pid, startTime: processStartTime(process.pid) ?? '' };
}
