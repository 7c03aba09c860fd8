import { describe, expect, it } from 'vitest';
import { parseSse } from '../../src/sdk/sse.js';

function body(parts: string[]): ReadableStream<Uint8Array> {
  const encoder = new TextEncoder();
  return new ReadableStream({
    start(controller) {
      for (const part of parts) controller.enqueue(encoder.encode(part));
      controller.close();
    },
  });
}

async function all(parts: string[]) {
  const out = [];
  for await (const event of parseSse(body(parts))) out.push(event);
  return out;
}

describe('server-sent events parser', () => {
  it('joins data lines, keeps ids, skips comments, and handles any line ending and split', async () => {
    const events = await all([
      ': keepalive\n\nid: 1\nevent: out', 'put\ndata: {"a":1}\n\n',
      'data: two\r\ndata: lines\r', '\n\r\n', 'id: 7\nevent: end\ndata:x\n\n', 'data: unterminated',
    ]);
    expect(events).toEqual([
      { event: 'output', data: '{"a":1}', id: '1' },
      { event: 'message', data: 'two\nlines', id: '1' },
      { event: 'end', data: 'x', id: '7' },
    ]);
  });

  it('decodes UTF-8 split across chunks', async () => {
    const bytes = new TextEncoder().encode('data: café\n\n');
    const stream = new ReadableStream<Uint8Array>({
      start(controller) {
        controller.enqueue(bytes.slice(0, 10));
        controller.enqueue(bytes.slice(10));
        controller.close();
      },
    });
    const out = [];
    for await (const event of parseSse(stream)) out.push(event.data);
    expect(out).toEqual(['café']);
  });
});
