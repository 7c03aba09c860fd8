import { InputError } from '../util/errors.js';

/** Row helpers shared by the SQLite repositories: JSON columns, timestamps, errors. */

/** A clock in epoch milliseconds; tests swap it to control ordering. */
export type ClockMs = () => number;

/** JSON for a TEXT column. Functions, symbols and `undefined` at the top level are refused. */
export function toJson(value: unknown, what: string): string {
  const text = JSON.stringify(value);
  if (text === undefined) throw new InputError(`${what} is not JSON-serialisable`);
  return text;
}

export function fromJson<T>(text: string | null): T | null {
  return text === null ? null : (JSON.parse(text) as T);
}

export function toDate(ms: number): Date;
export function toDate(ms: number | null): Date | null;
export function toDate(ms: number | null): Date | null {
  return ms === null ? null : new Date(ms);
}

/** Text and bytes are stored as BLOBs, byte-exact. */
export function toBytes(data: Buffer | Uint8Array | string): Buffer {
  if (typeof data === 'string') return Buffer.from(data, 'utf8');
  return Buffer.isBuffer(data) ? data : Buffer.from(data.buffer, data.byteOffset, data.byteLength);
}

/** better-sqlite3 reports constraint failures with a `code` such as SQLITE_CONSTRAINT_FOREIGNKEY. */
export function isSqliteError(err: unknown, code: string): boolean {
  return err instanceof Error && (err as { code?: unknown }).code === code;
}
