/**
 * The error tree. Every error has a stable `code`; its message says what failed, for which
 * VM, snapshot, environment or task, and what to do about it.
 */
export class PrewarmError extends Error {
  readonly code: string;

  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
    this.code = code;
  }
}

/** A host tool or facility is missing (QEMU, zstd, debootstrap, ...). */
export class HostSetupError extends PrewarmError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('HOST_SETUP', message, options);
  }
}

/** Input from the user (a spec, a flag, an id) is wrong. */
export class InputError extends PrewarmError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('BAD_INPUT', message, options);
  }
}

/** Something that was asked for does not exist. */
export class NotFoundError extends PrewarmError {
  constructor(message: string) {
    super('NOT_FOUND', message);
  }
}

/** The VMM failed: it would not start, died, or QMP returned an error. */
export class VmError extends PrewarmError {
  readonly vmId: string;

  constructor(vmId: string, message: string, options?: { cause?: unknown }) {
    super('VM', `VM ${vmId}: ${message}`, options);
    this.vmId = vmId;
  }
}

/** The guest agent did not answer in time or returned an error. */
export class GuestError extends PrewarmError {
  readonly vmId: string;

  constructor(vmId: string, message: string, options?: { cause?: unknown; code?: string }) {
    super(options?.code ?? 'GUEST', `VM ${vmId}: ${message}`, options);
    this.vmId = vmId;
  }
}

/** A snapshot is missing, incomplete or failed its integrity checks. */
export class SnapshotError extends PrewarmError {
  constructor(message: string, options?: { cause?: unknown; code?: string }) {
    super(options?.code ?? 'SNAPSHOT', message, options);
  }
}

/** Preparing an environment failed (clone, setup script, runtime). */
export class PrepareError extends PrewarmError {
  constructor(message: string, options?: { cause?: unknown; code?: string }) {
    super(options?.code ?? 'PREPARE', message, options);
  }
}

/** The host memory budget cannot admit a VM. */
export class BudgetError extends PrewarmError {
  readonly missingBytes: number;

  constructor(message: string, missingBytes: number) {
    super('BUDGET', message);
    this.missingBytes = missingBytes;
  }
}

/** The work was cancelled by its caller (an AbortSignal); the message says by whom. */
export class CancelledError extends PrewarmError {
  constructor(message: string) {
    super('CANCELLED', message);
  }
}

/** Why `signal` aborted, as a CancelledError (its reason's message when it has one). */
export function cancelReason(signal: AbortSignal): CancelledError {
  const reason: unknown = signal.reason;
  if (reason instanceof CancelledError) return reason;
  return new CancelledError(reason instanceof Error && reason.name !== 'AbortError' ? reason.message : 'cancelled');
}

/** Throw the CancelledError for `signal` when it has aborted. */
export function throwIfCancelled(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw cancelReason(signal);
}

export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
