/**
 * The guest agent's framing: newline-terminated JSON, where a reply to guest-sync-delimited
 * is preceded by a 0xFF byte. Valid UTF-8 never contains 0xFF, so the byte marks a clean
 * message boundary after an out-of-sync stretch.
 */

export const SENTINEL = 0xff;
const NEWLINE = 0x0a;

/** JSON text for `value`, with bigints written as exact integer literals. */
export function toJson(value: unknown): string {
  if (typeof value === 'bigint') return value.toString();
  if (Array.isArray(value)) return `[${value.map((item) => toJson(item ?? null)).join(',')}]`;
  if (typeof value === 'object' && value !== null && value.constructor === Object) {
    const fields = Object.entries(value)
      .filter(([, field]) => field !== undefined)
      .map(([key, field]) => `${JSON.stringify(key)}:${toJson(field)}`);
    return `{${fields.join(',')}}`;
  }
  return JSON.stringify(value);
}

/** Splits the agent's byte stream into parsed JSON messages. */
export class ReplyReader {
  private chunks: Buffer[] = [];
  private skipping = false;

  constructor(
    private readonly onMessage: (message: unknown) => void,
    private readonly onGarbage: (text: string) => void,
  ) {}

  /** Drop what is buffered and everything up to the next sentinel byte. */
  skipToSentinel(): void {
    this.chunks = [];
    this.skipping = true;
  }

  push(chunk: Buffer): void {
    if (this.skipping) {
      const at = chunk.indexOf(SENTINEL);
      if (at < 0) return;
      chunk = chunk.subarray(at + 1);
      this.skipping = false;
    }
    if (!chunk.includes(NEWLINE)) {
      if (chunk.length > 0) this.chunks.push(chunk);
      return;
    }

    let buffer = Buffer.concat([...this.chunks, chunk]);
    this.chunks = [];
    let newline: number;
    while ((newline = buffer.indexOf(NEWLINE)) >= 0) {
      let line = buffer.subarray(0, newline);
      buffer = buffer.subarray(newline + 1);
      line = line.subarray(line.lastIndexOf(SENTINEL) + 1);
      const text = line.toString('utf8').trim();
      if (text) this.parse(text);
      if (this.skipping) return this.push(buffer);
    }
    if (buffer.length > 0) this.chunks.push(buffer);
  }

  private parse(text: string): void {
    let message: unknown;
    try {
      message = JSON.parse(text);
    } catch {
      this.onGarbage(text);
      return;
    }
    this.onMessage(message);
  }
}
