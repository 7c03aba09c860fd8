import { execa, type ExecaError } from 'execa';
import { HostSetupError, PrewarmError } from '../util/errors.js';
import { SETUP_COMMAND } from '../util/host-tools.js';
import { errnoFromStderr, hostFault } from './host-fault.js';

/**
 * zstd, run as the `zstd` command. Compression uses every core (-T0) at level 3, which keeps
 * up with the disk; decompression writes sparse output, so a guest memory file that is mostly
 * zeros stays mostly holes on the host.
 */
export async function compressFile(src: string, dest: string): Promise<void> {
  await runZstd(['-T0', '-3', '-q', '-f', src, '-o', dest], `compressing ${src} to ${dest}`);
}

export async function decompressFile(
  src: string,
  dest: string,
  opts: { sparse: boolean } = { sparse: true },
): Promise<void> {
  const sparse = opts.sparse ? '--sparse' : '--no-sparse';
  await runZstd(['-d', '-q', '-f', sparse, src, '-o', dest], `decompressing ${src} to ${dest}`);
}

async function runZstd(args: string[], doing: string): Promise<void> {
  try {
    await execa('zstd', args, { stdin: 'ignore' });
  } catch (err) {
    const failure = err as ExecaError;
    if (failure.code === 'ENOENT') {
      throw new HostSetupError(
        `zstd is not installed (Debian package zstd; it compresses and restores snapshots); ` +
          `run ${SETUP_COMMAND} to install prewarm's host packages`,
        { cause: err },
      );
    }

    const stderr = String(failure.stderr ?? '').trim();
    const errno = errnoFromStderr(stderr);
    if (errno) {
      throw hostFault(Object.assign(new Error(`zstd: ${stderr}`), { code: errno }), doing);
    }
    const exit = failure.exitCode ?? failure.signal;
    const message = `${doing} failed: zstd exited with ${exit}: ${stderr || failure.shortMessage}`;
    throw new PrewarmError('ZSTD_FAILED', message, { cause: err });
  }
}
