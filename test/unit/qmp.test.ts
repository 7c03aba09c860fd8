import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { QmpClient } from '../../src/engine/qmp.js';
import { VmError } from '../../src/util/errors.js';

// A fake QEMU: greets, then hands each JSON line to `handle`, which writes whatever it likes.
type Handler = (message: Record<string, any>, conn: Socket) => void;

const QEMU_VERSION = { qemu: { micro: 0, minor: 2, major: 7 }, package: 'Debian 1:7.2' };
const GREETING = JSON.stringify({ QMP: { version: QEMU_VERSION, capabilities: [] } }) + '\n';

let dir: string;
let socketPath: string;
let server: Server | undefined;
let connections: Socket[];
let received: Record<string, any>[];
const clients: QmpClient[] = [];

function reply(conn: Socket, id: unknown, value: unknown = {}): void {
  conn.write(JSON.stringify({ return: value, id }) + '\n');
}

async function startServer(handle: Handler): Promise<void> {
  server = createServer((conn) => {
    connections.push(conn);
    conn.write(GREETING);
    let buffer = '';
    conn.on('data', (chunk) => {
      buffer += chunk.toString();
      let newline: number;
      while ((newline = buffer.indexOf('\n')) >= 0) {
        const message = JSON.parse(buffer.slice(0, newline));
        buffer = buffer.slice(newline + 1);
        received.push(message);
        if (message.execute === 'qmp_capabilities') reply(conn, message.id);
        else handle(message, conn);
      }
    });
    conn.on('error', () => undefined);
  });
  await new Promise<void>((resolve) => server!.listen(socketPath, resolve));
}

async function connect(timeoutMs = 2_000): Promise<QmpClient> {
  const client = await QmpClient.connect(socketPath, { vmId: 'vm-qmp', timeoutMs });
  clients.push(client);
  return client;
}

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'prewarm-qmp-'));
  socketPath = join(dir, 'qmp.sock');
  connections = [];
  received = [];
});

afterEach(async () => {
  await Promise.all(clients.splice(0).map((client) => client.close()));
  for (const conn of connections) conn.destroy();
  await new Promise((resolve) => (server ? server.close(resolve) : resolve(undefined)));
  server = undefined;
  await rm(dir, { recursive: true, force: true });
});

describe('QmpClient', () => {
  it('waits for the socket to appear, reads the greeting and negotiates capabilities', async () => {
    const connecting = connect();
    await sleep(150);
    await startServer((message, conn) => reply(conn, message.id, { status: 'running' }));

    const client = await connecting;
    expect(received[0]).toEqual({ execute: 'qmp_capabilities', id: expect.any(Number) });
    await expect(client.execute('query-status')).resolves.toEqual({ status: 'running' });
  });

  it('does not send commands before the greeting arrives', async () => {
    server = createServer((conn) => {
      connections.push(conn);
      conn.on('data', (chunk) => received.push(JSON.parse(chunk.toString())));
      setTimeout(() => conn.write(GREETING), 100);
    });
    await new Promise<void>((resolve) => server!.listen(socketPath, resolve));

    const connecting = connect();
    await sleep(50);
    expect(received).toEqual([]);
    await sleep(100);
    expect(received).toEqual([{ execute: 'qmp_capabilities', id: expect.any(Number) }]);
    reply(connections[0], received[0].id);
    await connecting;
  });

  it('matches replies to commands by id, across split and merged chunks', async () => {
    const held: Record<string, any>[] = [];
    await startServer((message, conn) => {
      held.push(message);
      if (held.length < 3) return;
      // Answer in reverse order: the last reply split in two, the other two in one write.
      const [a, b, c] = held.map((m) => JSON.stringify({ return: m.arguments, id: m.id }) + '\n');
      conn.write(c.slice(0, 7));
      setTimeout(() => conn.write(c.slice(7) + b + a), 20);
    });
    const client = await connect();

    const results = await Promise.all([
      client.execute('a', { n: 1 }),
      client.execute('b', { n: 2 }),
      client.execute('c', { n: 3 }),
    ]);
    expect(results).toEqual([{ n: 1 }, { n: 2 }, { n: 3 }]);
    expect(held.map((m) => m.execute)).toEqual(['a', 'b', 'c']);
  });

  it('rejects with the VM, the command and QEMU error class and description', async () => {
    await startServer((message, conn) => {
      const error = { class: 'DeviceNotFound', desc: "Device 'nope' not found" };
      conn.write(JSON.stringify({ error, id: message.id }) + '\n');
    });
    const client = await connect();

    const err = await client.execute('device_del', { id: 'nope' }).catch((e) => e);
    expect(err).toBeInstanceOf(VmError);
    expect(err.vmId).toBe('vm-qmp');
    expect(err.message).toBe(
      "VM vm-qmp: QMP command device_del failed: DeviceNotFound: Device 'nope' not found",
    );
  });

  it('delivers events to listeners and to waitForEvent with a predicate', async () => {
    await startServer((message, conn) => {
      const event = (name: string, data: object) =>
        JSON.stringify({ event: name, data, timestamp: { seconds: 1, microseconds: 2 } }) + '\n';
      const setup = event('MIGRATION', { status: 'setup' });
      conn.write(setup + event('MIGRATION', { status: 'active' }));
      setTimeout(() => {
        conn.write(event('MIGRATION', { status: 'completed' }));
        reply(conn, message.id);
      }, 20);
    });
    const client = await connect();
    const seen: string[] = [];
    const stop = client.onEvent((e) => seen.push(`${e.event}:${e.data?.status}`));

    const completed = client.waitForEvent('MIGRATION', {
      timeoutMs: 1_000,
      predicate: (e) => e.data?.status === 'completed',
    });
    await client.execute('migrate', { uri: 'file:/dev/null' });
    await expect(completed).resolves.toMatchObject({ data: { status: 'completed' } });
    expect(seen).toEqual(['MIGRATION:setup', 'MIGRATION:active', 'MIGRATION:completed']);

    stop();
    const timedOut = await client.waitForEvent('STOP', { timeoutMs: 30 }).catch((e) => e);
    expect(timedOut.message).toBe('VM vm-qmp: QMP event STOP did not arrive within 30 ms');
  });

  it('rejects pending commands and event waits when QEMU closes the socket', async () => {
    await startServer((message, conn) => {
      if (message.execute === 'quit') setTimeout(() => conn.destroy(), 20);
    });
    const client = await connect();

    const pending = client.execute('query-status').catch((e) => e);
    const waiting = client.waitForEvent('SHUTDOWN', { timeoutMs: 5_000 }).catch((e) => e);
    await client.execute('quit', undefined, { timeoutMs: 1_000 }).catch(() => undefined);

    const err = await pending;
    expect(err).toBeInstanceOf(VmError);
    expect(err.message).toContain(
      'VM vm-qmp: QMP connection closed (the QEMU process likely exited)',
    );
    expect(err.message).toContain('query-status');
    expect((await waiting).message).toContain('QMP connection closed');
    await expect(client.execute('cont')).rejects.toThrow(/QMP connection closed/);
  });

  it('times out a command that gets no answer, and ignores its late reply', async () => {
    await startServer((message, conn) => {
      const delayMs = message.execute === 'slow' ? 100 : 0;
      setTimeout(() => reply(conn, message.id, message.execute), delayMs);
    });
    const client = await connect();

    await expect(client.execute('slow', undefined, { timeoutMs: 30 })).rejects.toThrow(
      'VM vm-qmp: QMP command slow did not answer within 30 ms',
    );
    await sleep(120);
    await expect(client.execute('fast')).resolves.toBe('fast');
  });

  it('closes idempotently and rejects work after close', async () => {
    await startServer(() => undefined);
    const client = await connect();

    const pending = client.execute('query-status').catch((e) => e);
    await Promise.all([client.close(), client.close()]);
    await client.close();
    expect((await pending).message).toContain('closed by the client');
    await expect(client.execute('cont')).rejects.toBeInstanceOf(VmError);
  });

  it('gives up connecting after timeoutMs, naming the VM and the socket', async () => {
    const startedAt = Date.now();
    const err = await connect(200).catch((e) => e);
    expect(Date.now() - startedAt).toBeGreaterThanOrEqual(180);
    expect(err).toBeInstanceOf(VmError);
    expect(err.message).toMatch(
      /^VM vm-qmp: cannot connect to QMP socket .*qmp\.sock within 200 ms \(.*ENOENT/,
    );
  });
});
