import { residentMemory } from '../engine/proc.js';
import { cpus, totalmem } from 'node:os';
import { readFileSync } from 'node:fs';
import { qemuVersion } from '../engine/qemu-binary.js';

export interface Machine {
  cpuModel: string;
  cores: number;
  memoryBytes: number;
  qemu: string;
  kernel: string;
}

export async function describeMachine(): Promise<Machine> {
  return {
    cpuModel: cpus()[0]?.model ?? 'unknown',
    cores: cpus().length,
    memoryBytes: totalmem(),
    qemu: await qemuVersion(),
    kernel: readFileSync('/proc/sys/kernel/osrelease', 'utf8').trim(),
  };
}

/** Host memory the kernel could hand out now (MemAvailable). */
export function hostAvailableBytes(): number {
  const text = readFileSync('/proc/meminfo', 'utf8');
  return Number(/^MemAvailable:\s+(\d+)/m.exec(text)?.[1] ?? 0) * 1024;
}

/** Proportional set size of a process: shared pages split among the processes mapping them. */
export function pssBytes(pid: number): number {
  return residentMemory(pid)?.pssBytes ?? 0;
}
