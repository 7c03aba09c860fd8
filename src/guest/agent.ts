import { randomInt } from 'node:crypto';
import { connect as netConnect, type Socket } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { GuestError, errorMessage } from '../util/errors.js';
import { logger, type Logger } from '../util/log.js';
import { guestExec, type ExecOptions, type ExecResult } from './exec.js';
import { readGuestFile, writeGuestFile } from './files.js';
import { ReplyReader, SENTINEL, toJson } from './wire.js';

/**
 * A client for qemu-guest-agent on a virtio-serial port that QEMU exposes as a Unix socket
 * (`-chardev socket,server=on,wait=off`). The agent answers one request at a time and keeps
 * no framing of its own, so requests go through a queue, and after anything that may leave a
 * reply unread (connecting, a timeout) the stream is resynchronised with guest-sync-delimited.
 */

export interface AgentConnectOptions {
  vmId: string;
  /** How long to wait for the agent to answer; a booting guest needs seconds. */
  timeoutMs: number;
  /** The guest's serial log, named in the error when the agent never answers. */
  serialLogPath?: string;
  /** Stops the retries early, for example when the QEMU process exits first. */
  signal?: AbortSignal;
}

export interface RequestOptions {
  timeoutMs?: number;
}

/** The agent ran the command and returned an error. */
export class AgentCommandError extends GuestError {
  constructor(
    vmId: string,
    readonly command: string,
    readonly errorClass: string,
    readonly desc: string,
  ) {
    super(vmId, `guest agent command ${command} failed: ${errorClass}: ${desc}`, {
      code: 'AGENT_ERROR',
    });
  }
}

const DEFAULT_REQUEST_TIMEOUT_MS = 30_000;
const SYNC_ATTEMPT_MS = 500;
const CONNECT_RETRY_MS = 20;

/** What a waiting exchange makes of a reply; undefined skips it as not ours. */
type Outcome = { value: unknown } | { error: Error } | undefined;
type Waiter = (reply: Record<string, unknown>) => boolean;

export class AgentClient {
  readonly vmId: string;
  private readonly log: Logger;
  private readonly reader: ReplyReader;
  private socket?: Socket;
  private established = false;
  private closedError?: GuestError;
  private waiter?: Waiter;
  private onSocketClosed?: () => void;
  private needsSync = false;
  private queueTail: Promise<unknown> = Promise.resolve();

  private constructor(
    private readonly socketPath: string,
    vmId: string,
  ) {
    this.vmId = vmId;
    this.log = logger({ vmId, component: 'agent' });
    this.reader = new ReplyReader(
      (message) => this.onMessage(message),
      (text) => this.log.debug({ text }, 'agent sent a line that is not JSON'),
    );
  }

  /** Connect and resynchronise, retrying until the agent in the booting guest answers. */
  static async connect(socketPath: string, opts: AgentConnectOptions): Promise<AgentClient> {
    const client = new AgentClient(socketPath, opts.vmId);
    const deadlineMs = Date.now() + opts.timeoutMs;
    let lastError: unknown;

    while (Date.now() < deadlineMs) {
      if (opts.signal?.aborted) {
        await client.close();
        const reason = errorMessage(opts.signal.reason);
        throw new GuestError(opts.vmId, `stopped waiting for the guest agent: ${reason}`, {
          code: 'AGENT_ABORTED',
          cause: opts.signal.reason,
        });
      }
      try {
        await client.ensureSocket();
        await client.syncOnce(Math.min(SYNC_ATTEMPT_MS, deadlineMs - Date.now()));
        client.established = true;
        return client;
      } catch (err) {
        lastError = err;
        await sleep(Math.max(0, Math.min(CONNECT_RETRY_MS, deadlineMs - Date.now())));
      }
    }

    await client.close();
    const where = opts.serialLogPath ? `; see the guest's serial log ${opts.serialLogPath}` : '';
    throw new GuestError(
      opts.vmId,
      `the guest agent did not answer within ${opts.timeoutMs} ms on ${socketPath} ` +
        `(last error: ${errorMessage(lastError)}); check that the guest booted and that ` +
        `qemu-ga runs on the org.qemu.guest_agent.0 port${where}`,
      { code: 'AGENT_TIMEOUT', cause: lastError },
    );
  }

  /** Send one command and resolve with its `return` value. Requests run one at a time. */
  request<T = unknown>(
    command: string,
    args?: Record<string, unknown>,
    opts: RequestOptions = {},
  ): Promise<T> {
    const timeoutMs = opts.timeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS;
    const run = async (): Promise<T> => {
      if (this.closedError) throw this.closedError;
      if (this.needsSync) await this.resync(timeoutMs);
      return (await this.send(command, args, timeoutMs)) as T;
    };
    const result = this.queueTail.then(run, run);
    this.queueTail = result.catch(() => undefined);
    return result;
  }

  exec(opts: ExecOptions): Promise<ExecResult> {
    return guestExec(this, opts);
  }

  /** Run `script` with /bin/sh -c. */
  sh(script: string, opts: Omit<ExecOptions, 'path' | 'args'>): Promise<ExecResult> {
    return this.exec({ ...opts, path: '/bin/sh', args: ['-c', script] });
  }

  readFile(path: string): Promise<Buffer> {
    return readGuestFile(this, path);
  }

  /** Write (create or truncate) `path`; `mode` sets permission bits (the agent creates 0600). */
  writeFile(path: string, data: Buffer, opts: { mode?: number } = {}): Promise<void> {
    return writeGuestFile(this, path, data, opts);
  }

  /** Set the guest clock; without a time the agent sets it from the guest's hardware clock. */
  async setTime(nsSinceEpoch?: bigint): Promise<void> {
    const args = nsSinceEpoch === undefined ? undefined : { time: nsSinceEpoch };
    await this.request('guest-set-time', args);
  }

  /** Freeze the guest's filesystems; resolves with how many were frozen. */
  fsfreeze(): Promise<number> {
    return this.request<number>('guest-fsfreeze-freeze');
  }

  fsthaw(): Promise<number> {
    return this.request<number>('guest-fsfreeze-thaw');
  }

  fsfreezeStatus(): Promise<'thawed' | 'frozen'> {
    return this.request<'thawed' | 'frozen'>('guest-fsfreeze-status');
  }

  /** The guest's CLOCK_REALTIME in ms. The agent answers it itself (no process is started);
   * the nanoseconds it sends lose their last digits to JSON numbers, which ms do not mind. */
  async getTimeMs(opts: RequestOptions = {}): Promise<number> {
    return (await this.request<number>('guest-get-time', undefined, opts)) / 1e6;
  }

  async ping(opts: RequestOptions = {}): Promise<void> {
    await this.request('guest-ping', undefined, opts);
  }

  /** Close the connection; queued requests are rejected. Safe to call more than once. */
  async close(): Promise<void> {
    this.closedError ??= new GuestError(
      this.vmId,
      'the guest agent connection was closed by the client',
      { code: 'AGENT_CLOSED' },
    );
    const socket = this.socket;
    this.socket = undefined;
    this.onSocketClosed?.();
    if (socket && !socket.destroyed) {
      const closed = new Promise((resolve) => socket.once('close', resolve));
      socket.destroy();
      await closed;
    }
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  /** Write one request and wait for the next reply. */
  private send(command: string, args: Record<string, unknown> | undefined, timeoutMs: number) {
    const line = toJson({ execute: command, arguments: args }) + '\n';
    return this.exchange(line, timeoutMs, `guest agent command ${command}`, (reply) => {
      if (!('error' in reply)) return { value: reply.return };
      const error = (reply.error ?? {}) as { class?: string; desc?: string };
      const desc = error.desc ?? 'no description';
      return { error: new AgentCommandError(this.vmId, command, error.class ?? 'Error', desc) };
    });
  }

  /** Resynchronise the stream, one short attempt after another, within `budgetMs`. */
  private async resync(budgetMs: number): Promise<void> {
    const deadlineMs = Date.now() + budgetMs;
    for (;;) {
      try {
        await this.syncOnce(Math.max(1, Math.min(SYNC_ATTEMPT_MS, deadlineMs - Date.now())));
        return;
      } catch (err) {
        if (this.closedError || Date.now() >= deadlineMs) throw err;
      }
    }
  }

  /** Flush the agent's parser, ask it to echo a random id, and skip all replies before it. */
  private async syncOnce(timeoutMs: number): Promise<void> {
    const id = randomInt(1, 2 ** 47);
    const request = toJson({ execute: 'guest-sync-delimited', arguments: { id } }) + '\n';
    this.reader.skipToSentinel();
    const data = Buffer.concat([Buffer.from([SENTINEL]), Buffer.from(request)]);
    await this.exchange(data, timeoutMs, 'guest-sync-delimited', (reply) =>
      reply.return === id ? { value: id } : undefined,
    );
    this.needsSync = false;
  }

  /**
   * Write `data` and offer each reply to `accept` until it returns an outcome. A timeout
   * leaves the reply unread, so the next request resynchronises first.
   */
  private exchange(
    data: string | Buffer,
    timeoutMs: number,
    what: string,
    accept: (reply: Record<string, unknown>) => Outcome,
  ): Promise<unknown> {
    const socket = this.socket;
    if (this.closedError) return Promise.reject(this.closedError);
    if (!socket) {
      return Promise.reject(new GuestError(this.vmId, 'the guest agent is not connected'));
    }

    return new Promise((resolve, reject) => {
      const done = () => {
        clearTimeout(timer);
        this.waiter = undefined;
        this.onSocketClosed = undefined;
      };
      const timer = setTimeout(() => {
        done();
        this.needsSync = true;
        const message = `${what} did not answer within ${timeoutMs} ms`;
        reject(new GuestError(this.vmId, message, { code: 'AGENT_TIMEOUT' }));
      }, timeoutMs);
      this.waiter = (reply) => {
        const outcome = accept(reply);
        if (!outcome) return false;
        done();
        if ('error' in outcome) reject(outcome.error);
        else resolve(outcome.value);
        return true;
      };
      this.onSocketClosed = () => {
        done();
        const message = `the guest agent connection closed during ${what}`;
        reject(this.closedError ?? new GuestError(this.vmId, message));
      };
      socket.write(data);
    });
  }

  private onMessage(message: unknown): void {
    if (typeof message !== 'object' || message === null || Array.isArray(message)) return;
    if (this.waiter?.(message as Record<string, unknown>)) return;
    this.log.debug({ message }, 'discarded an agent reply nobody waits for');
  }

  /** Connect the socket if there is none; connect() retries while QEMU has not created it. */
  private async ensureSocket(): Promise<void> {
    if (this.socket && !this.socket.destroyed) return;
    const socket = await connectOnce(this.socketPath);
    this.socket = socket;
    socket.on('data', (chunk: Buffer) => this.reader.push(chunk));
    socket.on('error', (err) => this.log.debug({ err }, 'agent socket error'));
    socket.on('close', () => {
      if (this.socket !== socket) return;
      this.socket = undefined;
      if (this.established) {
        this.closedError ??= new GuestError(
          this.vmId,
          'the guest agent connection closed (the QEMU process likely exited)',
          { code: 'AGENT_CLOSED' },
        );
      }
      this.onSocketClosed?.();
    });
  }
}

function connectOnce(socketPath: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = netConnect(socketPath);
    socket.once('connect', () => {
      socket.off('error', reject);
      resolve(socket);
    });
    socket.once('error', reject);
  });
}
