import { errorMessage, PrewarmError } from '../util/errors.js';

/**
 * Errors from the host (disk full, permissions, a file where a directory should be) as
 * opposed to errors in a snapshot's content. A host fault never marks or deletes a snapshot;
 * it says what happened and what to change on the host.
 *
 * Codes: HOST_NO_SPACE for ENOSPC/EDQUOT, HOST_IO for everything else.
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

export function errnoOf(err: unknown): string | undefined {
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  return typeof code === 'string' ? code : undefined;
}

/** Wrap a host error with what was being done; PrewarmErrors pass through unchanged. */
export function hostFault(err: unknown, doing: string): PrewarmError {
  if (err instanceof PrewarmError) return err;

  const errno = errnoOf(err);
  const advice = (errno && ADVICE[errno]) ?? 'retry once the host problem is fixed';
  const code = errno === 'ENOSPC' || errno === 'EDQUOT' ? 'HOST_NO_SPACE' : 'HOST_IO';
  const message = `${doing} failed: ${errorMessage(err)}. No snapshot was changed; ${advice}.`;
  return new PrewarmError(code, message, { cause: err });
}

/** The errno a tool printed on stderr, for tools that only give an exit code. */
export function errnoFromStderr(stderr: string): string | undefined {
  if (/No space left on device/i.test(stderr)) return 'ENOSPC';
  if (/Disk quota exceeded/i.test(stderr)) return 'EDQUOT';
  if (/Permission denied/i.test(stderr)) return 'EACCES';
  if (/Read-only file system/i.test(stderr)) return 'EROFS';
  if (/Not a directory/i.test(stderr)) return 'ENOTDIR';
  if (/Input\/output error/i.test(stderr)) return 'EIO';
  return undefined;
}
