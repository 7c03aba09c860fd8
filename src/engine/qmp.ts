import { EventEmitter } from 'node:events';
import { connect as netConnect, type Socket } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { VmError, errorMessage } from '../util/errors.js';
import { logger, type Logger } from '../util/log.js';

/**
 * A client for QEMU's machine protocol (QMP): newline-delimited JSON on a Unix socket.
 * Replies are matched to commands by `id`, so several commands may be in flight. Events are
 * delivered to listeners; an event that arrives with no listener is dropped, so call
 * `waitForEvent` before the command that causes the event.
 */

export interface QmpEvent {
  event: string;
  data?: Record<string, unknown>;
  timestamp?: { seconds: number; microseconds: number };
}

export interface QmpConnectOptions {
  vmId: string;
  /** How long to wait for QEMU to create the socket, greet and accept capabilities. */
  timeoutMs: number;
}

export interface QmpExecuteOptions {
  timeoutMs?: number;
}

export interface QmpWaitOptions {
  timeoutMs: number;
  predicate?: (event: QmpEvent) => boolean;
}

const DEFAULT_COMMAND_TIMEOUT_MS = 30_000;
const CONNECT_RETRY_MS = 20;

interface Pending {
  command: string;
  resolve: (value: unknown) => void;
  reject: (err: Error) => void;
  timer: NodeJS.Timeout;
}

export class QmpClient {
  readonly vmId: string;
  private readonly socket: Socket;
  private readonly log: Logger;
  private readonly events = new EventEmitter();
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;
  private buffer = '';
  private greeting?: () => void;
  private closedError?: VmError;
  private closing?: Promise<void>;

  private constructor(vmId: string, socket: Socket) {
    this.vmId = vmId;
    this.socket = socket;
    this.log = logger({ vmId, component: 'qmp' });
    this.events.setMaxListeners(0);
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => this.onData(chunk));
    socket.on('error', (err) => this.log.debug({ err }, 'qmp socket error'));
    socket.on('close', () =>
      this.shutdown('QMP connection closed (the QEMU process likely exited)'),
    );
  }

  /** Connect, retrying while QEMU has not yet created the socket, then negotiate. */
  static async connect(socketPath: string, opts: QmpConnectOptions): Promise<QmpClient> {
    const deadlineMs = Date.now() + opts.timeoutMs;
    const socket = await connectUnix(socketPath, opts.vmId, opts.timeoutMs, deadlineMs);
    const client = new QmpClient(opts.vmId, socket);
    try {
      await client.awaitGreeting(Math.max(1, deadlineMs - Date.now()));
      await client.execute('qmp_capabilities', undefined, {
        timeoutMs: Math.max(1, deadlineMs - Date.now()),
      });
      return client;
    } catch (err) {
      await client.close();
      throw err;
    }
  }

  /** Run one command and resolve with its `return` value. */
  execute<T = unknown>(
    command: string,
    args?: Record<string, unknown>,
    opts: QmpExecuteOptions = {},
  ): Promise<T> {
    if (this.closedError) return Promise.reject(this.closedError);
    const id = this.nextId++;
    const timeoutMs = opts.timeoutMs ?? DEFAULT_COMMAND_TIMEOUT_MS;

    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        const message = `QMP command ${command} did not answer within ${timeoutMs} ms`;
        reject(new VmError(this.vmId, message));
      }, timeoutMs);
      this.pending.set(id, { command, resolve: resolve as (v: unknown) => void, reject, timer });
      const message = { execute: command, arguments: args, id };
      this.socket.write(JSON.stringify(message) + '\n');
    });
  }

  /** Call `listener` for every event; returns a function that removes it. */
  onEvent(listener: (event: QmpEvent) => void): () => void {
    this.events.on('event', listener);
    return () => this.events.off('event', listener);
  }

  /** Resolve with the next event named `name` (and accepted by `predicate`). */
  waitForEvent(name: string, opts: QmpWaitOptions): Promise<QmpEvent> {
    if (this.closedError) return Promise.reject(this.closedError);

    return new Promise<QmpEvent>((resolve, reject) => {
      const finish = (err: Error | undefined, event?: QmpEvent) => {
        clearTimeout(timer);
        this.events.off('event', onEvent);
        this.events.off('closed', onClosed);
        if (err) reject(err);
        else resolve(event!);
      };
      const onEvent = (event: QmpEvent) => {
        if (event.event === name && (opts.predicate?.(event) ?? true)) finish(undefined, event);
      };
      const onClosed = (err: VmError) => finish(err);
      const timer = setTimeout(() => {
        const message = `QMP event ${name} did not arrive within ${opts.timeoutMs} ms`;
        finish(new VmError(this.vmId, message));
      }, opts.timeoutMs);
      this.events.on('event', onEvent);
      this.events.on('closed', onClosed);
    });
  }

  /** Close the connection; pending commands are rejected. Safe to call more than once. */
  close(): Promise<void> {
    this.closing ??= new Promise<void>((resolve) => {
      this.shutdown('QMP connection closed by the client');
      if (this.socket.destroyed) resolve();
      else {
        this.socket.once('close', () => resolve());
        this.socket.destroy();
      }
    });
    return this.closing;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  private awaitGreeting(timeoutMs: number): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.events.off('closed', onClosed);
        reject(new VmError(this.vmId, `QMP greeting did not arrive within ${timeoutMs} ms`));
      }, timeoutMs);
      const onClosed = (err: VmError) => {
        clearTimeout(timer);
        reject(err);
      };
      this.events.once('closed', onClosed);
      this.greeting = () => {
        clearTimeout(timer);
        this.events.off('closed', onClosed);
        resolve();
      };
    });
  }

  private onData(chunk: string): void {
    this.buffer += chunk;
    let newline: number;
    while ((newline = this.buffer.indexOf('\n')) >= 0) {
      const line = this.buffer.slice(0, newline).trim();
      this.buffer = this.buffer.slice(newline + 1);
      if (line) this.onLine(line);
    }
  }

  private onLine(line: string): void {
    let message: Record<string, unknown>;
    try {
      message = JSON.parse(line) as Record<string, unknown>;
    } catch {
      this.log.warn({ line }, 'QMP sent a line that is not JSON');
      return;
    }

    if ('QMP' in message) {
      this.greeting?.();
      this.greeting = undefined;
    } else if (typeof message.event === 'string') {
      this.events.emit('event', message as unknown as QmpEvent);
    } else if (typeof message.id === 'number' && this.pending.has(message.id)) {
      const pending = this.pending.get(message.id)!;
      this.pending.delete(message.id);
      clearTimeout(pending.timer);
      if ('error' in message) pending.reject(this.commandError(pending.command, message.error));
      else pending.resolve(message.return);
    } else {
      this.log.debug({ line }, 'QMP reply matches no pending command');
    }
  }

  private commandError(command: string, error: unknown): VmError {
    const { class: errorClass, desc } = (error ?? {}) as { class?: string; desc?: string };
    const detail = `${errorClass ?? 'Error'}: ${desc ?? 'no description'}`;
    return new VmError(this.vmId, `QMP command ${command} failed: ${detail}`);
  }

  private shutdown(reason: string): void {
    if (this.closedError) return;
    this.closedError = new VmError(this.vmId, reason);
    for (const pending of this.pending.values()) {
      clearTimeout(pending.timer);
      pending.reject(new VmError(this.vmId, `${reason}; command ${pending.command} got no answer`));
    }
    this.pending.clear();
    this.events.emit('closed', this.closedError);
  }
}

/** Connect to a Unix socket, retrying while it is absent or not yet listening. */
async function connectUnix(
  socketPath: string,
  vmId: string,
  timeoutMs: number,
  deadlineMs: number,
): Promise<Socket> {
  for (;;) {
    try {
      return await new Promise<Socket>((resolve, reject) => {
        const socket = netConnect(socketPath);
        socket.once('connect', () => {
          socket.off('error', reject);
          resolve(socket);
        });
        socket.once('error', reject);
      });
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      const retryable = code === 'ENOENT' || code === 'ECONNREFUSED';
      if (!retryable || Date.now() + CONNECT_RETRY_MS > deadlineMs) {
        throw new VmError(
          vmId,
          `cannot connect to QMP socket ${socketPath} within ${timeoutMs} ms ` +
            `(${errorMessage(err)}); check that QEMU started (see its stderr)`,
          { cause: err },
        );
      }
      await sleep(CONNECT_RETRY_MS);
    }
  }
}
