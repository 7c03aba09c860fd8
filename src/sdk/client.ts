import type {
  CreateEnvironmentRequest, CreateTaskRequest, Environment, EnvironmentStatus, ErrorResponse,
  FieldError, Health, LogEntry, Pool, PrepareJob, TaskView,
} from '../api/schemas.js';
import { parseSse } from './sse.js';

export type {
  CreateEnvironmentRequest, CreateTaskRequest, Environment, EnvironmentStatus, FieldError, Health,
  LogEntry, Pool, PrepareJob, TaskView,
};
export type TaskStatus = TaskView['status'];

const ENDED: readonly TaskStatus[] = ['succeeded', 'failed', 'oom_killed', 'timed_out', 'error', 'cancelled'];

export interface ClientOptions {
  /** e.g. http://127.0.0.1:7070 */
  baseUrl: string;
  /** The service's token (PREWARM_HOME/api-token on its host). */
  token: string;
  /** Default: the global fetch. */
  fetch?: typeof fetch;
}

/** The service answered with an error: its HTTP status, code, message and bad fields. */
export class PrewarmApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly fields: FieldError[] = [],
  ) {
    super(message);
    this.name = 'PrewarmApiError';
  }
}

/** A wait ran out of time; the task or job goes on. */
export class PrewarmTimeoutError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'PrewarmTimeoutError';
  }
}

export interface WaitOptions {
  /** Default 30 minutes. */
  timeoutMs?: number;
  /** Default 1000. */
  pollMs?: number;
}

export interface LogOptions {
  /** Start after this sequence number (default 0: from the beginning). */
  after?: number;
  /** Reconnects when the stream drops before the task ended; default 5. */
  maxReconnects?: number;
  /** Told the task's final status when the stream ends with it. */
  onEnd?: (status: string) => void;
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * A typed client of the prewarm service. Every method throws PrewarmApiError when the
 * service answers with an error status.
 */
export class PrewarmClient {
  private readonly baseUrl: string;
  private readonly token: string;
  private readonly fetch: typeof fetch;

  constructor(opts: ClientOptions) {
    this.baseUrl = opts.baseUrl.replace(/\/+$/, '');
    this.token = opts.token;
    this.fetch = opts.fetch ?? globalThis.fetch;
  }

  health(): Promise<Health> {
    return this.json('GET', '/health');
  }

  /** Register (or replace) an environment from a spec: YAML text or an object. */
  createEnvironment(req: CreateEnvironmentRequest): Promise<Environment> {
    return this.json('POST', '/v1/environments', req);
  }

  async listEnvironments(): Promise<Environment[]> {
    return (await this.json<{ environments: Environment[] }>('GET', '/v1/environments')).environments;
  }

  getEnvironment(name: string): Promise<Environment> {
    return this.json('GET', `/v1/environments/${enc(name)}`);
  }

  environmentStatus(name: string): Promise<EnvironmentStatus> {
    return this.json('GET', `/v1/environments/${enc(name)}/status`);
  }

  /**
   * Prepare an environment. With `wait` (the default) this polls the job until it ends and
   * returns it; check `status` ('succeeded' or 'failed', with `error` and `outputTail`).
   */
  async prepare(name: string, opts: { force?: boolean; wait?: boolean } & WaitOptions = {}): Promise<PrepareJob> {
    const job = await this.json<PrepareJob>('POST', `/v1/environments/${enc(name)}/prepare`,
      { force: opts.force ?? false });
    if (opts.wait === false) return job;
    return this.waitFor(() => this.getJob(job.id), (j) => j.status !== 'running', `prepare job ${job.id}`, opts);
  }

  getJob(id: string): Promise<PrepareJob> {
    return this.json('GET', `/v1/jobs/${enc(id)}`);
  }

  /** Queue a task; returns at once with its id (status 'queued'). */
  createTask(req: CreateTaskRequest): Promise<TaskView> {
    return this.json('POST', '/v1/tasks', req);
  }

  getTask(id: string): Promise<TaskView> {
    return this.json('GET', `/v1/tasks/${enc(id)}`);
  }

  async listTasks(filter: { env?: string; status?: TaskStatus; limit?: number } = {}): Promise<TaskView[]> {
    const query = new URLSearchParams();
    for (const [key, value] of Object.entries(filter)) if (value !== undefined) query.set(key, String(value));
    const qs = query.size > 0 ? `?${query}` : '';
    return (await this.json<{ tasks: TaskView[] }>('GET', `/v1/tasks${qs}`)).tasks;
  }

  /** Poll until the task has ended; returns it. PrewarmTimeoutError after `timeoutMs`. */
  waitForTask(id: string, opts: WaitOptions = {}): Promise<TaskView> {
    return this.waitFor(() => this.getTask(id), (t) => ENDED.includes(t.status), `task ${id}`, opts);
  }

  cancelTask(id: string): Promise<TaskView> {
    return this.json('POST', `/v1/tasks/${enc(id)}/cancel`);
  }

  /**
   * What the task's commands write, live, until the task ends: a string per chunk that is
   * valid UTF-8, else a Buffer. With `events`, prewarm's progress lines come too (strings).
   */
  async *streamLog(id: string, opts: LogOptions & { events?: boolean } = {}): AsyncGenerator<string | Buffer> {
    for await (const entry of this.logEntries(id, opts)) {
      if (entry.stream === 'event' && !opts.events) continue;
      yield entry.text ?? Buffer.from(entry.base64 ?? '', 'base64');
    }
  }

  /** Every log entry (output and events) with its sequence number, live, until the task ends. */
  async *logEntries(id: string, opts: LogOptions = {}): AsyncGenerator<LogEntry> {
    let after = opts.after ?? 0;
    let reconnects = 0;
    for (;;) {
      const res = await this.request('GET', `/v1/tasks/${enc(id)}/log?after=${after}`, undefined,
        { accept: 'text/event-stream' });
      if (!res.body) throw new PrewarmApiError(res.status, 'NO_BODY', `log stream of task ${id} has no body`);
      let ended = false;
      try {
        for await (const event of parseSse(res.body)) {
          if (event.event === 'end') {
            ended = true;
            opts.onEnd?.(String((JSON.parse(event.data) as { status?: unknown }).status ?? 'unknown'));
            break;
          }
          if (event.event !== 'output' && event.event !== 'event') continue;
          const entry = JSON.parse(event.data) as LogEntry;
          after = entry.seq;
          reconnects = 0;
          yield entry;
        }
      } catch (err) {
        // The connection broke mid-stream (fetch says "terminated"; the service died or
        // restarted): resume below, like a stream that ended early.
        if (!(err instanceof TypeError)) throw err;
      }
      if (ended) return;
      // The connection ended before the task did (a proxy, a restart): resume where we were.
      if (++reconnects > (opts.maxReconnects ?? 5)) {
        throw new PrewarmApiError(0, 'STREAM_ENDED', `the log stream of task ${id} kept ending before the task did`);
      }
      await sleep(1000);
    }
  }

  /** The task's change as a git diff. Text; use getDiffBytes for a byte-exact copy. */
  async getDiff(id: string): Promise<string> {
    return (await this.getDiffBytes(id)).toString('utf8');
  }

  async getDiffBytes(id: string): Promise<Buffer> {
    const res = await this.request('GET', `/v1/tasks/${enc(id)}/diff`, undefined, { accept: 'text/x-diff' });
    return Buffer.from(await res.arrayBuffer());
  }

  getPool(env: string): Promise<Pool> {
    return this.json('GET', `/v1/pools/${enc(env)}`);
  }

  setPool(env: string, targetSize: number): Promise<Pool> {
    return this.json('PUT', `/v1/pools/${enc(env)}`, { targetSize });
  }

  async metrics(): Promise<string> {
    return (await this.request('GET', '/metrics')).text();
  }

  private async waitFor<T>(
    get: () => Promise<T>, done: (value: T) => boolean, what: string, opts: WaitOptions,
  ): Promise<T> {
    const timeoutMs = opts.timeoutMs ?? 30 * 60_000;
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const value = await get();
      if (done(value)) return value;
      if (Date.now() >= deadline) throw new PrewarmTimeoutError(`${what} has not ended after ${timeoutMs} ms`);
      await sleep(Math.min(opts.pollMs ?? 1000, Math.max(0, deadline - Date.now())));
    }
  }

  private async json<T>(method: string, path: string, body?: unknown): Promise<T> {
    const res = await this.request(method, path, body);
    return (await res.json()) as T;
  }

  private async request(
    method: string, path: string, body?: unknown, headers: Record<string, string> = {},
  ): Promise<Response> {
    const res = await this.fetch(`${this.baseUrl}${path}`, {
      method,
      headers: {
        authorization: `Bearer ${this.token}`,
        ...(body === undefined ? {} : { 'content-type': 'application/json' }),
        ...headers,
      },
      body: body === undefined ? undefined : JSON.stringify(body),
    }).catch((err: Error & { cause?: { code?: string; message?: string } }) => {
      const why = err.cause?.code ?? err.cause?.message ?? err.message;
      throw new PrewarmApiError(0, 'UNREACHABLE', `cannot reach the prewarm service at ${this.baseUrl} (${why}); ` +
        'check the URL and that `prewarm serve` runs there');
    });
    if (res.ok) return res;
    const text = await res.text();
    let error: ErrorResponse['error'] | undefined;
    try {
      error = (JSON.parse(text) as Partial<ErrorResponse>).error;
    } catch {
      // not JSON (a proxy's page, say): the text is the message
    }
    throw new PrewarmApiError(res.status, error?.code ?? `HTTP_${res.status}`,
      error?.message ?? (text.trim() || res.statusText), error?.fields ?? []);
  }
}

function enc(segment: string): string {
  return encodeURIComponent(segment);
}
