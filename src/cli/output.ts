import { PrewarmApiError } from '../sdk/client.js';
import { PrewarmError, errorMessage } from '../util/errors.js';

/** What a command reports: JSON with --json, else the human rendering. */
export function report(json: boolean, value: unknown, human: () => string): void {
  process.stdout.write(json ? JSON.stringify(value, null, 2) + '\n' : human() + '\n');
}

export function table(rows: Record<string, unknown>[], columns: string[]): string {
  if (rows.length === 0) return '(none)';
  const cells = rows.map((r) => columns.map((c) => String(r[c] ?? '')));
  const widths = columns.map((c, i) => Math.max(c.length, ...cells.map((row) => row[i].length)));
  const line = (values: string[]) => values.map((v, i) => v.padEnd(widths[i])).join('  ').trimEnd();
  return [line(columns.map((c) => c.toUpperCase())), ...cells.map(line)].join('\n');
}

export function mib(bytes: number | null | undefined): string {
  return bytes == null ? '-' : `${(bytes / 2 ** 20).toFixed(0)} MiB`;
}

/** Print an error the way users should see it: the message, and the code with --json. */
export function printError(err: unknown, json: boolean): void {
  // The service's errors (the SDK's PrewarmApiError) carry a code and a message meant for users.
  const api = err instanceof PrewarmApiError;
  const code = err instanceof PrewarmError || api ? err.code : 'INTERNAL';
  if (json) {
    process.stdout.write(JSON.stringify({ error: { code, message: errorMessage(err) } }, null, 2) + '\n');
  } else {
    process.stderr.write(`prewarm: ${errorMessage(err)}\n`);
    if (!(err instanceof PrewarmError) && !api && err instanceof Error && err.stack) {
      process.stderr.write(`${err.stack}\n`);
    }
  }
}
