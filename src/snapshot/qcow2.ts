import { execa } from 'execa';
import { toolFailure } from './host-fault.js';

/**
 * The two qemu-img operations the store needs on a disk overlay: read its backing file name,
 * and point it at another path without touching the data (`rebase -u` rewrites the header).
 */
export async function readBackingFile(path: string): Promise<string | null> {
  const { stdout } = await qemuImg(['info', '-U', '--output=json', path], `reading ${path}`);
  const info = JSON.parse(stdout) as { 'backing-filename'?: string };
  return info['backing-filename'] ?? null;
}

export async function rebaseUnsafe(path: string, backingPath: string): Promise<void> {
  await qemuImg(
    ['rebase', '-u', '-F', 'qcow2', '-b', backingPath, path],
    `pointing ${path} at its base image ${backingPath}`,
  );
}

async function qemuImg(args: string[], doing: string): Promise<{ stdout: string }> {
  try {
    return await execa('qemu-img', args, { stdin: 'ignore' });
  } catch (err) {
    throw toolFailure('qemu-img', 'qemu-utils', err, doing);
  }
}
