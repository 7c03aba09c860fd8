import { readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import { HostSetupError } from '../util/errors.js';
import { sha256 } from '../util/hash.js';
import { requireTool } from '../util/host-tools.js';

/** Where the guest finds the refresh helper (clock + CRNG reseed after a restore). */
export const GUEST_REFRESH_PATH = '/usr/local/bin/prewarm-refresh';

/** The helper's C source: src/image/guest-helper/ from both src/ (tsx) and dist/ (built). */
const SOURCE = fileURLToPath(new URL('../../src/image/guest-helper/prewarm-refresh.c', import.meta.url));

/** The source's digest, an image input: a changed helper is a new image. */
export async function guestHelperDigest(): Promise<string> {
  return sha256(await readFile(SOURCE, 'utf8'));
}

/**
 * Compile the helper on the host, static (the guest is the same Debian and architecture, and
 * a static binary needs nothing of its libraries), into `out`.
 */
export async function buildGuestHelper(out: string): Promise<void> {
  await requireTool('gcc', 'gcc');
  const result = await execa('gcc', ['-static', '-Os', '-s', '-Wall', '-o', out, SOURCE], { reject: false, all: true });
  if (result.exitCode !== 0) {
    throw new HostSetupError(`compiling the guest helper ${SOURCE} failed (exit ${result.exitCode}); a static ` +
      `build needs Debian's libc6-dev (scripts/setup.sh installs it):\n${String(result.all).slice(-2000)}`);
  }
}
