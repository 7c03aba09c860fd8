import type { ServerResponse } from 'node:http';
import type { FastifyReply } from 'fastify';
import type { LogChunk, StateStore, TaskStatus } from '../state/db.js';
import { LOG_READ_BATCH } from '../state/task-logs.js';
import type { LogEntry } from './schemas.js';

const KEEPALIVE_MS = 15_000;
const OPEN: readonly TaskStatus[] = ['queued', 'running'];
const utf8 = new TextDecoder('utf-8', { fatal: true });

/** A chunk as the JSON data of one event: text when it is valid UTF-8, else base64. */
export function logEntry(chunk: LogChunk): LogEntry {
  const base = { seq: chunk.seq, stream: chunk.stream, at: chunk.at.toISOString() };
  try {
    return { ...base, text: utf8.decode(chunk.data) };
  } catch {
    return { ...base, base64: chunk.data.toString('base64') };
  }
}

/**
 * Task logs as server-sent events. A stream replays the stored chunks after `afterSeq`, then
 * reads new ones as soon as this process appends them or its task ends (notify), and every
 * `pollMs` for what other processes append; it ends with an `end` event once the
 * task has ended and its runner in this service has let go of it (so the last chunks are
 * in). Chunks come from the state store, so a task run by another process can be followed
 * too.
 */
export class LogStreams {
  /** Open streams and the task each follows. */
  private readonly open = new Map<ServerResponse, string>();
  private readonly waiting = new Map<string, Set<() => void>>();
  private readonly unsubscribe: () => void;

  constructor(
    private readonly state: StateStore,
    private readonly isActive: (taskId: string) => boolean,
    private readonly pollMs = 200,
  ) {
    this.unsubscribe = state.taskLogs.onAppend((taskId) => this.notify(taskId));
  }

  /** Something changed for `taskId` (a chunk, its end): its streams look now. */
  notify(taskId: string): void {
    const wakers = this.waiting.get(taskId);
    this.waiting.delete(taskId);
    for (const wake of wakers ?? []) wake();
  }

  /** A stream's task has ended once it is neither queued nor running and its runner in this
   * service has let go of it (so its last chunks are stored). */
  private async taskEnd(taskId: string): Promise<{ ended: boolean; status: string }> {
    const task = await this.state.tasks.get(taskId);
    return { ended: !task || (!OPEN.includes(task.status) && !this.isActive(taskId)), status: task?.status ?? 'unknown' };
  }

  /** Until notify(taskId), or pollMs at most. */
  private pause(taskId: string): Promise<void> {
    return new Promise((resolve) => {
      const wakers = this.waiting.get(taskId) ?? new Set();
      this.waiting.set(taskId, wakers);
      const wake = () => {
        clearTimeout(timer);
        wakers.delete(wake);
        if (wakers.size === 0 && this.waiting.get(taskId) === wakers) this.waiting.delete(taskId);
        resolve();
      };
      const timer = setTimeout(wake, this.pollMs);
      wakers.add(wake);
    });
  }

  async serve(reply: FastifyReply, taskId: string, afterSeq: number): Promise<void> {
    reply.hijack();
    const res = reply.raw;
    res.writeHead(200, {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-cache',
      connection: 'keep-alive',
      'x-accel-buffering': 'no',
    });
    this.open.set(res, taskId);
    let closed = false;
    res.on('close', () => {
      closed = true;
    });

    let seq = afterSeq;
    let lastWriteMs = Date.now();
    try {
      while (!closed && this.open.has(res)) {
        const { ended, status } = await this.taskEnd(taskId);
        const chunks = await this.state.taskLogs.read(taskId, seq, LOG_READ_BATCH);
        for (const chunk of chunks) {
          await write(res, `id: ${chunk.seq}\nevent: ${chunk.stream}\ndata: ${JSON.stringify(logEntry(chunk))}\n\n`);
          seq = chunk.seq;
          lastWriteMs = Date.now();
        }
        if (chunks.length > 0) {
          // Other requests get the event loop between batches.
          await new Promise((resolve) => setImmediate(resolve));
          continue;
        }
        if (ended) {
          await write(res, `event: end\ndata: ${JSON.stringify({ status })}\n\n`);
          break;
        }
        if (Date.now() - lastWriteMs > KEEPALIVE_MS) {
          await write(res, ': keepalive\n\n');
          lastWriteMs = Date.now();
        }
        await this.pause(taskId);
      }
    } finally {
      this.open.delete(res);
      if (!res.writableEnded) res.end();
    }
  }

  /**
   * At shutdown, once running tasks are done: let each stream whose task has ended send what
   * is left and its `end` event, for `timeoutMs` at most. Streams of tasks still queued stay
   * open (closeAll ends them).
   */
  async settle(timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    const endedOnes = async () => {
      const ended: string[] = [];
      for (const taskId of new Set(this.open.values())) if ((await this.taskEnd(taskId)).ended) ended.push(taskId);
      return ended;
    };
    for (let ended = await endedOnes(); ended.length > 0 && Date.now() < deadline; ended = await endedOnes()) {
      for (const taskId of ended) this.notify(taskId);
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
  }

  /** End every open stream (shutdown); clients resume with Last-Event-ID elsewhere. */
  closeAll(): void {
    this.unsubscribe();
    for (const res of this.open.keys()) res.end();
    this.open.clear();
    for (const taskId of [...this.waiting.keys()]) this.notify(taskId);
  }
}

async function write(res: ServerResponse, text: string): Promise<void> {
  if (res.writableEnded || res.destroyed) return;
  if (!res.write(text)) {
    await new Promise<void>((resolve) => {
      const done = () => {
        res.off('drain', done);
        res.off('close', done);
        resolve();
      };
      res.on('drain', done);
      res.on('close', done);
    });
  }
}
