import { execa } from 'execa';
import { toolFailure } from './host-fault.js';

/**
 * zstd, run as the `zstd` command. Compression uses every core (-T0) at level 3, which keeps
 * up with the disk; decompression can write sparse output, so a guest memory file that is
 * mostly zeros stays mostly holes on the host.
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
    throw toolFailure('zstd', 'zstd', err, doing);
  }
}
