import { execa, type ExecaError } from 'execa';
import { HostSetupError } from '../util/errors.js';
import { SETUP_COMMAND } from '../util/host-tools.js';
import { hostFault } from './host-fault.js';

/**
 * The two qemu-img operations the store needs on a disk overlay: read its backing file name,
 * and point it at another path without touching the data (`rebase -u`, header only).
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
    const failure = err as ExecaError;
    if (failure.code === 'ENOENT') {
      throw new HostSetupError(
        `qemu-img is not installed (Debian package qemu-utils; it fixes snapshot disks for ` +
          `this host); run ${SETUP_COMMAND} to install prewarm's host packages`,
        { cause: err },
      );
    }
    const stderr = String(failure.stderr ?? '').trim();
    throw hostFault(new Error(`qemu-img: ${stderr || failure.shortMessage}`), doing);
  }
}
