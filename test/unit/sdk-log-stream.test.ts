import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { PrewarmApiError, PrewarmClient } from '../../src/sdk/client.js';

const event = (seq: number, text: string) =>
  `id: ${seq}\nevent: output\ndata: ${JSON.stringify({ seq, stream: 'output', at: new Date().toISOString(), text })}\n\n`;

let server: Server | undefined;
afterEach(() => new Promise<void>((resolve) => (server ? server.close(() => resolve()) : resolve())));

/** A service whose n-th log request (from 0) is answered by `answer(n, after, res)`. */
async function serve(answer: (n: number, after: number, res: import('node:http').ServerResponse) => void) {
  let n = 0;
  server = createServer((req, res) => {
    const after = Number(new URL(req.url!, 'http://x').searchParams.get('after'));
    res.writeHead(200, { 'content-type': 'text/event-stream' });
    answer(n++, after, res);
  });
  await new Promise<void>((resolve) => server!.listen(0, '127.0.0.1', resolve));
  return new PrewarmClient({ baseUrl: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, token: 't' });
}

describe('PrewarmClient.logEntries', () => {
  it('resumes after a connection that breaks mid-stream, from the last entry it had, and reports the end status', async () => {
    const afters: number[] = [];
    const client = await serve((n, after, res) => {
      afters.push(after);
      if (n === 0) {
        res.write(event(1, 'one'));
        setTimeout(() => res.socket?.destroy(), 50);
      } else {
        res.end(event(2, 'two') + 'event: end\ndata: {"status":"succeeded"}\n\n');
      }
    });
    let status: string | undefined;
    const texts: string[] = [];
    for await (const entry of client.logEntries('task-1', { onEnd: (s) => { status = s; } })) texts.push(entry.text!);
    expect(texts).toEqual(['one', 'two']);
    expect(afters).toEqual([0, 1]);
    expect(status).toBe('succeeded');
  }, 20_000);

  it('fails with the SDK\'s UNREACHABLE error, not fetch\'s, when the service is gone for good', async () => {
    const client = await serve((_n, _after, res) => {
      res.write(event(1, 'one'));
      setTimeout(() => {
        res.socket?.destroy();
        server!.close();
        server = undefined;
      }, 50);
    });
    const texts: string[] = [];
    const err = await (async () => {
      for await (const entry of client.logEntries('task-1')) texts.push(entry.text!);
    })().catch((e: unknown) => e);
    expect(texts).toEqual(['one']);
    expect(err).toBeInstanceOf(PrewarmApiError);
    expect((err as PrewarmApiError).code).toBe('UNREACHABLE');
  }, 20_000);
});
