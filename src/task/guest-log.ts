import { setTimeout as sleep } from 'node:timers/promises';
import { AgentCommandError, type AgentClient } from '../guest/agent.js';

/**
 * Live output of a guest command. The agent returns a command's output only when it exits,
 * so the command appends to a file in the guest and this follows that file: one
 * guest-file-open, then guest-file-read on an interval; each read returns what was appended
 * since the last (qemu-ga's end-of-file is not sticky: a read after EOF sees new bytes).
 */

export interface FollowOptions {
  /** Called with each new piece of the file, in order. */
  onChunk: (chunk: Buffer) => void;
  /** The pause between reads while the file does not grow. */
  intervalMs?: number;
}

export interface GuestFileFollower {
  /** Read to the current end one last time, close the handle, and resolve with the number
   * of bytes delivered. Rejects with the first read error, if any. */
  stop(): Promise<number>;
}

interface ReadReply {
  count: number;
  'buf-b64'?: string;
  eof: boolean;
}

const DEFAULT_INTERVAL_MS = 200;
const CHUNK_BYTES = 1024 * 1024;

/** Follow `path` until stop(). The file may not exist yet: opening is retried each time. */
export function followGuestFile(
  agent: AgentClient,
  path: string,
  opts: FollowOptions,
): GuestFileFollower {
  const intervalMs = opts.intervalMs ?? DEFAULT_INTERVAL_MS;
  let handle: number | undefined;
  let deliveredBytes = 0;
  let stopped = false;
  let failure: unknown;
  const wake = new AbortController();

  const open = async (): Promise<boolean> => {
    if (handle !== undefined) return true;
    try {
      handle = await agent.request<number>('guest-file-open', { path, mode: 'r' });
      return true;
    } catch (err) {
      // Not created yet; anything but an agent error (a timeout, a closed socket) is fatal.
      if (err instanceof AgentCommandError) return false;
      throw err;
    }
  };

  /** Read everything appended so far. */
  const drain = async (): Promise<void> => {
    if (!(await open())) return;
    for (;;) {
      const reply = await agent.request<ReadReply>('guest-file-read', {
        handle,
        count: CHUNK_BYTES,
      });
      if (reply.count === 0) return;
      const chunk = Buffer.from(reply['buf-b64'] ?? '', 'base64');
      deliveredBytes += chunk.length;
      opts.onChunk(chunk);
      if (reply.count < CHUNK_BYTES) return;
    }
  };

  const loop = (async () => {
    while (!stopped) {
      await drain();
      await sleep(intervalMs, undefined, { signal: wake.signal }).catch(() => undefined);
    }
  })().catch((err: unknown) => {
    failure = err;
  });

  return {
    async stop() {
      stopped = true;
      wake.abort();
      await loop;
      try {
        if (failure === undefined) await drain();
      } catch (err) {
        failure = err;
      }
      if (handle !== undefined) {
        await agent.request('guest-file-close', { handle }).catch(() => undefined);
      }
      if (failure !== undefined) throw failure;
      return deliveredBytes;
    },
  };
}
