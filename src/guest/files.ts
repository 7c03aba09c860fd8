import { GuestError, PrewarmError, errorMessage } from '../util/errors.js';
import type { AgentClient } from './agent.js';

/** Reading and writing guest files through guest-file-*, one MiB per request. */

const CHUNK_BYTES = 1024 * 1024;

interface ReadReply {
  count: number;
  'buf-b64': string;
  eof: boolean;
}

export async function readGuestFile(agent: AgentClient, path: string): Promise<Buffer> {
  const failed = (err: unknown) => fileError(agent, `cannot read ${path} in the guest`, err);
  const handle = await agent.request<number>('guest-file-open', { path, mode: 'r' }).catch(failed);

  const chunks: Buffer[] = [];
  try {
    for (;;) {
      const args = { handle, count: CHUNK_BYTES };
      const reply = await agent.request<ReadReply>('guest-file-read', args);
      chunks.push(Buffer.from(reply['buf-b64'], 'base64'));
      if (reply.eof || reply.count === 0) break;
    }
  } catch (err) {
    await closeQuietly(agent, handle);
    throw failed(err);
  }

  await agent.request('guest-file-close', { handle }).catch(failed);
  return Buffer.concat(chunks);
}

export async function writeGuestFile(
  agent: AgentClient,
  path: string,
  data: Buffer,
  opts: { mode?: number },
): Promise<void> {
  const failed = (err: unknown) => fileError(agent, `cannot write ${path} in the guest`, err);
  const handle = await agent.request<number>('guest-file-open', { path, mode: 'w' }).catch(failed);

  try {
    let offset = 0;
    while (offset < data.length) {
      const chunk = data.subarray(offset, offset + CHUNK_BYTES);
      const reply = await agent.request<{ count: number }>('guest-file-write', {
        handle,
        'buf-b64': chunk.toString('base64'),
      });
      if (reply.count <= 0) throw new Error(`the agent wrote 0 bytes at offset ${offset}`);
      offset += reply.count;
    }
  } catch (err) {
    await closeQuietly(agent, handle);
    throw failed(err);
  }

  // Closing flushes the agent's stdio buffer, so its errors count.
  await agent.request('guest-file-close', { handle }).catch(failed);
  if (opts.mode !== undefined) await chmod(agent, path, opts.mode).catch(failed);
}

async function chmod(agent: AgentClient, path: string, mode: number): Promise<void> {
  const result = await agent.exec({
    path: '/bin/chmod',
    args: [mode.toString(8), '--', path],
    timeoutMs: 10_000,
  });
  if (result.exitCode !== 0) {
    throw new Error(`chmod ${mode.toString(8)} failed: ${result.stderr.toString().trim()}`);
  }
}

async function closeQuietly(agent: AgentClient, handle: number): Promise<void> {
  await agent.request('guest-file-close', { handle }).catch(() => undefined);
}

/** Wrap `err` with what was being done, keeping its code (AGENT_TIMEOUT stays a timeout). */
function fileError(agent: AgentClient, what: string, err: unknown): never {
  const prefix = `VM ${agent.vmId}: `;
  const detail = errorMessage(err).startsWith(prefix)
    ? errorMessage(err).slice(prefix.length)
    : errorMessage(err);
  const code = err instanceof PrewarmError ? err.code : 'GUEST';
  throw new GuestError(agent.vmId, `${what}: ${detail}`, { code, cause: err });
}
