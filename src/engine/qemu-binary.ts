import { execa } from 'execa';
import { HostSetupError } from '../util/errors.js';
import { SETUP_COMMAND } from '../util/host-tools.js';

export const QEMU_BINARY = process.env.PREWARM_QEMU ?? 'qemu-system-x86_64';

let version: string | undefined;

/** QEMU's version ("7.2.22"); a missing binary is a setup error that names the fix. */
export async function qemuVersion(): Promise<string> {
  if (version) return version;
  const result = await execa(QEMU_BINARY, ['--version'], { reject: false });
  const match = /version (\d+\.\d+\.\d+)/.exec(String(result.stdout));
  if (result.exitCode !== 0 || !match) {
    throw new HostSetupError(
      `QEMU (${QEMU_BINARY}) is not installed or does not run; run ${SETUP_COMMAND} ` +
        `(Debian packages qemu-system-x86 and qemu-utils)`,
    );
  }
  version = match[1];
  return version;
}

export const ENGINE_NAME = 'qemu';
