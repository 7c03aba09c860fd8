import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { AgentClient } from '../../src/guest/agent.js';
import { GUEST_REFRESH_PATH } from '../../src/image/guest-helper.js';
import { Guest } from '../../src/guest/guest.js';
import { GuestError } from '../../src/util/errors.js';

/**
 * A fake qemu-guest-agent: a 0xFF byte resets its parser, each JSON line is one request,
 * requests are handled one at a time, and guest-sync-delimited answers 0xFF + {"return": id}.
 * A handler returns the `return` value, throws {class, desc} for an error reply, or returns
 * NO_REPLY to stay silent.
 */
const NO_REPLY = Symbol('no reply');
type Handler = (args: any, agent: FakeAgent) => unknown;

class FakeAgent {
  server!: Server;
  readonly connections: Socket[] = [];
  readonly requests: { execute: string; arguments?: any; raw: string }[] = [];
  readonly handlers: Record<string, Handler> = {};
  /** Input before this time is lost, as when the guest has not opened its port yet. */
  deafUntilMs = 0;
  /** Written before each sync reply: what a confused stream might hold. */
  noiseBeforeSync = Buffer.alloc(0);
  sentinelsSeen = 0;
  inFlight = 0;
  maxInFlight = 0;

  async listen(socketPath: string): Promise<void> {
    this.server = createServer((conn) => this.serve(conn));
    await new Promise<void>((resolve) => this.server.listen(socketPath, resolve));
  }

  async stop(): Promise<void> {
    for (const conn of this.connections) conn.destroy();
    await new Promise((resolve) => this.server?.close(resolve) ?? resolve(undefined));
  }

  commands(): string[] {
    return this.requests.map((r) => r.execute).filter((c) => c !== 'guest-sync-delimited');
  }

  private serve(conn: Socket): void {
    this.connections.push(conn);
    conn.on('error', () => undefined);
    let line: number[] = [];
    let queue = Promise.resolve();
    conn.on('data', (chunk: Buffer) => {
      if (Date.now() < this.deafUntilMs) return;
      for (const byte of chunk) {
        if (byte === 0xff) {
          this.sentinelsSeen++;
          line = [];
        } else if (byte === 0x0a) {
          const raw = Buffer.from(line).toString();
          line = [];
          queue = queue.then(() => this.handle(conn, raw));
        } else {
          line.push(byte);
        }
      }
    });
  }

  private async handle(conn: Socket, raw: string): Promise<void> {
    const request = { ...JSON.parse(raw), raw };
    this.requests.push(request);
    this.inFlight++;
    this.maxInFlight = Math.max(this.maxInFlight, this.inFlight);
    try {
      if (request.execute === 'guest-sync-delimited') {
        conn.write(this.noiseBeforeSync);
        const reply = `{"return": ${request.arguments.id}}\n`;
        conn.write(Buffer.concat([Buffer.from([0xff]), Buffer.from(reply)]));
        return;
      }
      const handler = this.handlers[request.execute];
      if (!handler) {
        const desc = `The command ${request.execute} has not been found`;
        throw { class: 'CommandNotFound', desc };
      }
      const value = await handler(request.arguments, this);
      if (value !== NO_REPLY) conn.write(JSON.stringify({ return: value }) + '\n');
    } catch (error) {
      conn.write(JSON.stringify({ error }) + '\n');
    } finally {
      this.inFlight--;
    }
  }
}

let dir: string;
let socketPath: string;
let fake: FakeAgent;
const clients: AgentClient[] = [];

async function connect(timeoutMs = 3_000, serialLogPath?: string): Promise<AgentClient> {
  const client = await AgentClient.connect(socketPath, { vmId: 'vm-ga', timeoutMs, serialLogPath });
  clients.push(client);
  return client;
}

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'prewarm-agent-'));
  socketPath = join(dir, 'agent.sock');
  fake = new FakeAgent();
  fake.handlers['guest-ping'] = () => ({});
});

afterEach(async () => {
  await Promise.all(clients.splice(0).map((client) => client.close()));
  await fake.stop();
  await rm(dir, { recursive: true, force: true });
});

describe('AgentClient connect', () => {
  it('flushes the parser and skips garbage and stale ids before the sync reply', async () => {
    await fake.listen(socketPath);
    fake.noiseBeforeSync = Buffer.concat([
      Buffer.from('{"error": {"class": "GenericError", "desc": "JSON parse error"}}\n\x00garbage'),
      Buffer.from([0xff]),
      Buffer.from('{"return": 12345}\n{"return": {}}\n'),
    ]);

    const client = await connect();
    expect(fake.sentinelsSeen).toBe(1);
    expect(fake.requests).toHaveLength(1);
    fake.noiseBeforeSync = Buffer.alloc(0);
    await expect(client.ping()).resolves.toBeUndefined();
  });

  it('retries while the socket is absent and while the agent is not listening', async () => {
    const connecting = connect(5_000);
    await sleep(100);
    fake.deafUntilMs = Date.now() + 1_200;
    await fake.listen(socketPath);

    const client = await connecting;
    const syncs = fake.requests.filter((r) => r.execute === 'guest-sync-delimited');
    expect(syncs).toHaveLength(1);
    expect(fake.sentinelsSeen).toBe(1);
    await expect(client.ping()).resolves.toBeUndefined();
  });

  it('fails with AGENT_TIMEOUT naming the VM and the serial log', async () => {
    await fake.listen(socketPath);
    fake.deafUntilMs = Infinity;

    const startedAt = Date.now();
    const err = await connect(1_200, '/var/vm-ga/serial.log').catch((e) => e);
    expect(Date.now() - startedAt).toBeGreaterThanOrEqual(1_150);
    expect(err).toBeInstanceOf(GuestError);
    expect(err.code).toBe('AGENT_TIMEOUT');
    expect(err.vmId).toBe('vm-ga');
    expect(err.message).toMatch(/^VM vm-ga: the guest agent did not answer within 1200 ms/);
    expect(err.message).toContain('/var/vm-ga/serial.log');
  });

  it('stops retrying when the signal aborts', async () => {
    const controller = new AbortController();
    setTimeout(() => controller.abort(new Error('QEMU exited with code 1')), 100);

    const startedAt = Date.now();
    const err = await AgentClient.connect(socketPath, {
      vmId: 'vm-ga',
      timeoutMs: 10_000,
      signal: controller.signal,
    }).catch((e) => e);
    expect(Date.now() - startedAt).toBeLessThan(1_000);
    expect(err.code).toBe('AGENT_ABORTED');
    expect(err.message).toBe(
      'VM vm-ga: stopped waiting for the guest agent: QEMU exited with code 1',
    );
  });
});

describe('AgentClient requests', () => {
  it('serialises concurrent requests and rejects agent errors with the command', async () => {
    await fake.listen(socketPath);
    fake.handlers['guest-info'] = async () => {
      await sleep(20);
      return { version: '7.2.0' };
    };
    const client = await connect();

    const [a, b, c] = await Promise.all([
      client.request('guest-info'),
      client.request('guest-info'),
      client.request('guest-nope').catch((e) => e),
    ]);
    expect(a).toEqual({ version: '7.2.0' });
    expect(b).toEqual({ version: '7.2.0' });
    expect(c.code).toBe('AGENT_ERROR');
    expect(c.message).toBe(
      'VM vm-ga: guest agent command guest-nope failed: ' +
        'CommandNotFound: The command guest-nope has not been found',
    );
    expect(fake.maxInFlight).toBe(1);
  });

  it('times out a request, then resynchronises so its late reply is not misread', async () => {
    await fake.listen(socketPath);
    fake.handlers['guest-info'] = async () => {
      await sleep(150);
      return 'late';
    };
    fake.handlers['guest-get-host-name'] = () => ({ 'host-name': 'prewarm' });
    const client = await connect();

    const err = await client.request('guest-info', undefined, { timeoutMs: 50 }).catch((e) => e);
    expect(err).toBeInstanceOf(GuestError);
    expect(err.code).toBe('AGENT_TIMEOUT');
    expect(err.message).toBe(
      'VM vm-ga: guest agent command guest-info did not answer within 50 ms',
    );

    const hostName = await client.request('guest-get-host-name');
    expect(hostName).toEqual({ 'host-name': 'prewarm' });
    expect(fake.requests.map((r) => r.execute)).toEqual([
      'guest-sync-delimited',
      'guest-info',
      'guest-sync-delimited',
      'guest-get-host-name',
    ]);
  });

  it('writes a nanosecond time above 2^53 exactly', async () => {
    await fake.listen(socketPath);
    fake.handlers['guest-set-time'] = () => ({});
    const client = await connect();

    await client.setTime(1_700_000_000_123_456_789n);
    await client.setTime();
    const [withTime, withoutTime] = fake.requests.filter((r) => r.execute === 'guest-set-time');
    expect(withTime.raw).toBe(
      '{"execute":"guest-set-time","arguments":{"time":1700000000123456789}}',
    );
    expect(withoutTime.raw).toBe('{"execute":"guest-set-time"}');
  });

  it('reads the guest time in ms from guest-get-time', async () => {
    await fake.listen(socketPath);
    fake.handlers['guest-get-time'] = () => 1_700_000_000_123_456_789;
    const client = await connect();
    expect(await client.getTimeMs()).toBeCloseTo(1_700_000_000_123.457, 0);
  });

  it('rejects pending and later requests when the connection closes', async () => {
    await fake.listen(socketPath);
    fake.handlers['guest-info'] = () => NO_REPLY;
    const client = await connect();

    const pending = client.request('guest-info').catch((e) => e);
    const queued = client.ping().catch((e) => e);
    await sleep(30);
    fake.connections[0].destroy();
    expect((await pending).message).toContain(
      'agent connection closed (the QEMU process likely exited)',
    );
    expect((await queued).code).toBe('AGENT_CLOSED');

    await client.close();
    await client.close();
  });
});

describe('AgentClient exec', () => {
  it('runs under setsid, sends stdin and polls with backoff until the process exits', async () => {
    await fake.listen(socketPath);
    let polls = 0;
    fake.handlers['guest-exec'] = () => ({ pid: 4242 });
    fake.handlers['guest-exec-status'] = (args) => {
      expect(args).toEqual({ pid: 4242 });
      if (++polls < 4) return { exited: false };
      return {
        exited: true,
        exitcode: 3,
        'out-data': Buffer.from('héllo\n').toString('base64'),
        'err-data': Buffer.from('oops').toString('base64'),
      };
    };
    const client = await connect();

    const result = await client.exec({
      path: '/usr/bin/env',
      args: ['cat'],
      env: ['A=1'],
      inputData: Buffer.from('input'),
      timeoutMs: 5_000,
    });
    expect(result).toEqual({
      exitCode: 3,
      signal: null,
      stdout: Buffer.from('héllo\n'),
      stderr: Buffer.from('oops'),
      timedOut: false,
      outputTruncated: false,
    });
    expect(polls).toBe(4);
    expect(fake.requests.find((r) => r.execute === 'guest-exec')?.arguments).toEqual({
      path: '/usr/bin/setsid',
      arg: ['/usr/bin/env', 'cat'],
      env: ['A=1'],
      'input-data': Buffer.from('input').toString('base64'),
      'capture-output': true,
    });
  });

  it('kills the process group on timeout and reports partial output', async () => {
    await fake.listen(socketPath);
    const killed = new Set<number>();
    let killerScript = '';
    fake.handlers['guest-exec'] = (args) => {
      if (args.path === '/bin/sh' && args.arg[1].includes('kill')) {
        killerScript = args.arg[1];
        killed.add(77);
        return { pid: 78 };
      }
      return { pid: 77 };
    };
    fake.handlers['guest-exec-status'] = ({ pid }) => {
      if (pid === 78) return { exited: true, exitcode: 0 };
      if (!killed.has(77)) return { exited: false };
      const outData = Buffer.from('partial').toString('base64');
      return { exited: true, signal: 9, 'out-data': outData, 'out-truncated': true };
    };
    const client = await connect();

    const startedAt = Date.now();
    const result = await client.sh('sleep 1000 & wait', { timeoutMs: 300, pollMs: 40 });
    expect(Date.now() - startedAt).toBeGreaterThanOrEqual(300);
    expect(Date.now() - startedAt).toBeLessThan(1_000);
    expect(result).toMatchObject({
      exitCode: null,
      signal: 9,
      timedOut: true,
      outputTruncated: true,
    });
    expect(result.stdout.toString()).toBe('partial');
    expect(killerScript).toContain('kill -KILL -77');
    expect(killerScript).toContain('kill -KILL 77');
    expect(killerScript).not.toContain('--'); // dash's kill builtin rejects it
    // Backoff: 5, 10, 20, 40, 40... ms, so about a dozen polls in 300 ms rather than 60.
    const polls = fake.requests.filter((r) => r.execute === 'guest-exec-status').length;
    expect(polls).toBeGreaterThan(5);
    expect(polls).toBeLessThan(20);
  });
});

describe('AgentClient files', () => {
  const MiB = 1024 * 1024;

  function fileHandlers(files: Map<string, Buffer>, opts: { maxWriteBytes?: number } = {}) {
    const open = new Map<number, { path: string; offset: number }>();
    let nextHandle = 1000;
    fake.handlers['guest-file-open'] = ({ path, mode }) => {
      if (mode === 'r' && !files.has(path)) {
        const desc = `failed to open file '${path}' (mode: 'r'): No such file or directory`;
        throw { class: 'GenericError', desc };
      }
      if (mode === 'w') files.set(path, Buffer.alloc(0));
      open.set(nextHandle, { path, offset: 0 });
      return nextHandle++;
    };
    fake.handlers['guest-file-read'] = ({ handle, count }) => {
      const file = open.get(handle)!;
      const data = files.get(file.path)!.subarray(file.offset, file.offset + count);
      file.offset += data.length;
      const eof = file.offset >= files.get(file.path)!.length;
      return { count: data.length, 'buf-b64': data.toString('base64'), eof };
    };
    fake.handlers['guest-file-write'] = ({ handle, 'buf-b64': b64 }) => {
      const file = open.get(handle)!;
      const data = Buffer.from(b64, 'base64').subarray(0, opts.maxWriteBytes);
      files.set(file.path, Buffer.concat([files.get(file.path)!, data]));
      return { count: data.length, eof: false };
    };
    fake.handlers['guest-file-close'] = ({ handle }) => {
      open.delete(handle);
      return {};
    };
    return open;
  }

  it('reads a file in 1 MiB requests until eof and closes it', async () => {
    await fake.listen(socketPath);
    const content = Buffer.alloc(2.5 * MiB, 'abc');
    const open = fileHandlers(new Map([['/data/big.bin', content]]));
    const client = await connect();

    const data = await client.readFile('/data/big.bin');
    expect(data.equals(content)).toBe(true);
    const reads = fake.requests.filter((r) => r.execute === 'guest-file-read');
    expect(reads.map((r) => r.arguments.count)).toEqual([MiB, MiB, MiB]);
    expect(open.size).toBe(0);
  });

  it('writes in 1 MiB chunks, resumes after short writes and applies the mode', async () => {
    await fake.listen(socketPath);
    const files = new Map<string, Buffer>();
    const open = fileHandlers(files, { maxWriteBytes: 600 * 1024 });
    fake.handlers['guest-exec'] = () => ({ pid: 9 });
    fake.handlers['guest-exec-status'] = () => ({ exited: true, exitcode: 0 });
    const client = await connect();

    const content = Buffer.from(Array.from({ length: 2 * MiB + 5 }, (_, i) => i % 251));
    await client.writeFile('/work/out.bin', content, { mode: 0o755 });
    expect(files.get('/work/out.bin')!.equals(content)).toBe(true);
    const writes = fake.requests.filter((r) => r.execute === 'guest-file-write');
    const sizes = writes.map((r) => Buffer.from(r.arguments['buf-b64'], 'base64').length);
    expect(Math.max(...sizes)).toBeLessThanOrEqual(MiB);
    expect(writes).toHaveLength(4);
    expect(open.size).toBe(0);
    const chmod = fake.requests.find((r) => r.execute === 'guest-exec')!.arguments;
    expect(chmod.arg).toEqual(['/bin/chmod', '755', '--', '/work/out.bin']);
  });

  it('names the VM and the path when a file cannot be opened', async () => {
    await fake.listen(socketPath);
    fileHandlers(new Map());
    const client = await connect();

    const err = await client.readFile('/etc/missing').catch((e) => e);
    expect(err).toBeInstanceOf(GuestError);
    expect(err.code).toBe('AGENT_ERROR');
    expect(err.message).toMatch(
      /^VM vm-ga: cannot read \/etc\/missing in the guest: .*No such file/,
    );
  });
});

describe('Guest', () => {
  it('refreshes through the image helper, falls back to perl on an older image, and runs scripts in a cwd', async () => {
    await fake.listen(socketPath);
    const execs: any[] = [];
    let helperExit = 0;
    fake.handlers['guest-exec'] = (args) => {
      execs.push(args);
      return { pid: execs.length };
    };
    fake.handlers['guest-exec-status'] = (args) => ({
      exited: true,
      exitcode: execs[(args as { pid: number }).pid - 1].arg[0] === GUEST_REFRESH_PATH ? helperExit : 0,
      'out-data': Buffer.from('ok\n').toString('base64'),
    });
    const guest = new Guest(await connect());

    await guest.refresh();
    expect(execs).toHaveLength(1);
    expect(execs[0].arg[0]).toBe(GUEST_REFRESH_PATH);
    const [seconds] = execs[0].arg.slice(1).map(Number);
    expect(Math.abs(seconds - Date.now() / 1000)).toBeLessThan(5);
    expect(Buffer.from(execs[0]['input-data'], 'base64')).toHaveLength(512);

    helperExit = 127; // not found: an image from before the helper
    await guest.refresh();
    expect(execs).toHaveLength(3);
    expect(execs[2].arg[0]).toBe('/usr/bin/perl');
    expect(execs[2].arg[2]).toContain('ioctl($f, 0x5207, 0)');
    execs.splice(0, 2);

    const opts = { timeoutMs: 1_000, cwd: "/work/it's", env: { CI: '1' } };
    const result = await guest.run('npm test', opts);
    expect(result.stdout).toBe('ok\n');
    expect(execs[1].arg).toEqual(['/bin/sh', '-c', "cd -- '/work/it'\\''s' || exit 1\nnpm test"]);
    expect(execs[1].env).toContain('CI=1');
    expect(execs[1].env).toContain('HOME=/root');
  });
});
