import { execa } from 'execa';
import { HostSetupError } from './errors.js';

export const SETUP_COMMAND = 'scripts/setup.sh';

/** Fail with a clear error when a host tool that prewarm runs is not installed. */
export async function requireTool(tool: string, debianPackage: string): Promise<void> {
  const found = await execa('sh', ['-c', `command -v ${tool}`], { reject: false });
  if (found.exitCode !== 0) {
    throw new HostSetupError(
      `${tool} is not installed (Debian package ${debianPackage}); ` +
        `run ${SETUP_COMMAND} to install prewarm's host packages`,
    );
  }
}

export async function requireRoot(what: string): Promise<void> {
  if (process.getuid?.() !== 0) {
    throw new HostSetupError(`${what} needs root (debootstrap and chroot); run it as root`);
  }
}
