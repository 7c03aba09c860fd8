import type { ExecaError } from 'execa';
import { errorMessage, HostSetupError, PrewarmError } from '../util/errors.js';
import { SETUP_COMMAND } from '../util/host-tools.js';

/**
 * Errors from the host (disk full, permissions, a file where a directory should be) as
 * opposed to errors in a snapshot's content. A host fault never marks or deletes a snapshot;
 * it says what happened and what to change on the host.
 *
 * Codes: HOST_NO_SPACE for ENOSPC/EDQUOT, HOST_IO for other errno failures.
 */
const ADVICE: Record<string, string> = {
  ENOSPC: 'free space on that filesystem and retry',
  EDQUOT: 'raise the disk quota or free space, then retry',
  EACCES: 'make the path writable for this user and retry',
  EPERM: 'make the path writable for this user and retry',
  EROFS: 'the filesystem is read-only; remount it read-write or set PREWARM_HOME elsewhere',
  ENOTDIR: 'a file is in the way where a directory should be; move it away and retry',
  EEXIST: 'something is in the way at that path; move it away and retry',
  EISDIR: 'a directory is in the way where a file should be; move it away and retry',
  EIO: 'the disk reported an I/O error; check the host (dmesg) before retrying',
};

function errnoOf(err: unknown): string | undefined {
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  return typeof code === 'string' && /^E[A-Z]+$/.test(code) ? code : undefined;
}

/**
 * Wrap an errno error with what was being done. Anything else (a PrewarmError, a bug) is
 * returned unchanged, so it is never passed off as the host's fault.
 */
export function hostFault(err: unknown, doing: string): unknown {
  const errno = errnoOf(err);
  if (err instanceof PrewarmError || !errno) return err;

  const advice = ADVICE[errno] ?? 'retry once the host problem is fixed';
  const code = errno === 'ENOSPC' || errno === 'EDQUOT' ? 'HOST_NO_SPACE' : 'HOST_IO';
  const message = `${doing} failed: ${errorMessage(err)}. No snapshot was changed; ${advice}.`;
  return new PrewarmError(code, message, { cause: err });
}

/** The errno a tool printed on stderr, for tools that only give an exit code. */
function errnoFromStderr(stderr: string): string | undefined {
  if (/No space left on device/i.test(stderr)) return 'ENOSPC';
  if (/Disk quota exceeded/i.test(stderr)) return 'EDQUOT';
  if (/Permission denied/i.test(stderr)) return 'EACCES';
  if (/Read-only file system/i.test(stderr)) return 'EROFS';
  if (/Not a directory/i.test(stderr)) return 'ENOTDIR';
  if (/Input\/output error/i.test(stderr)) return 'EIO';
  return undefined;
}

/**
 * Turn a failed run of a host tool (zstd, qemu-img) into an error that says what happened:
 * HostSetupError when it is not installed, a host fault when its stderr names one, otherwise
 * `<TOOL>_FAILED` with the tool's own words.
 */
export function toolFailure(
  tool: string,
  debianPackage: string,
  err: unknown,
  doing: string,
): PrewarmError {
  const failure = err as ExecaError;
  if (failure.code === 'ENOENT') {
    return new HostSetupError(
      `${tool} is not installed (Debian package ${debianPackage}); ` +
        `run ${SETUP_COMMAND} to install prewarm's host packages`,
      { cause: err },
    );
  }

  const stderr = String(failure.stderr ?? '').trim();
  const errno = errnoFromStderr(stderr);
  if (errno) {
    const fault = Object.assign(new Error(`${tool}: ${stderr}`), { code: errno });
    return hostFault(fault, doing) as PrewarmError;
  }
  const exit = failure.exitCode ?? failure.signal;
  const code = `${tool.toUpperCase().replace(/[^A-Z]/g, '_')}_FAILED`;
  const message = `${doing} failed: ${tool} exited with ${exit}: ${stderr || failure.shortMessage}`;
  return new PrewarmError(code, message, { cause: err });
}
