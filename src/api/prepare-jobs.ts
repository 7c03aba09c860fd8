import { randomBytes } from 'node:crypto';
import type { EnvSpec } from '../env/spec.js';
import type { StateStore } from '../state/db.js';
import { errorMessage } from '../util/errors.js';
import { logger } from '../util/log.js';
import type { EnvOps } from './env-ops.js';
import type { PrepareJob } from './schemas.js';

const OUTPUT_TAIL_BYTES = 64 * 1024;
/** Finished jobs kept for polling; the oldest are forgotten first. */
const KEEP_FINISHED = 100;

interface JobEntry {
  job: PrepareJob;
  output: Buffer;
  done: Promise<void>;
}

/**
 * Prepare runs as a background job: POST returns at once, the caller polls the job. One job
 * per environment at a time; asking again while it runs returns the running job. Jobs live in
 * memory only (a prepare is idempotent: after a restart, ask again and a finished snapshot is
 * a cache hit).
 */
export class PrepareJobs {
  private readonly jobs = new Map<string, JobEntry>();
  private readonly log = logger({ part: 'api' });

  constructor(private readonly state: StateStore, private readonly ops: EnvOps) {}

  start(spec: EnvSpec, force: boolean): PrepareJob {
    const running = [...this.jobs.values()].find(
      (e) => e.job.envName === spec.name && e.job.status === 'running',
    );
    if (running) return this.view(running);

    const entry: JobEntry = {
      job: {
        id: `prep-${randomBytes(6).toString('hex')}`, kind: 'prepare', envName: spec.name,
        status: 'running', force, createdAt: new Date().toISOString(), finishedAt: null,
        result: null, error: null, outputTail: '',
      },
      output: Buffer.alloc(0),
      done: Promise.resolve(),
    };
    this.jobs.set(entry.job.id, entry);
    entry.done = this.run(entry, spec, force);
    this.forgetOld();
    return this.view(entry);
  }

  get(id: string): PrepareJob | undefined {
    const entry = this.jobs.get(id);
    return entry && this.view(entry);
  }

  /** Resolves when every running job has ended (shutdown). */
  async settled(): Promise<void> {
    await Promise.all([...this.jobs.values()].map((e) => e.done));
  }

  private async run(entry: JobEntry, spec: EnvSpec, force: boolean): Promise<void> {
    const { job } = entry;
    const log = this.log.child({ envId: spec.name, jobId: job.id });
    log.info({ force }, 'prepare started');
    try {
      const outcome = await this.ops.prepare(spec, {
        force,
        onOutput: (chunk) => {
          const all = Buffer.concat([entry.output, chunk]);
          entry.output = all.subarray(Math.max(0, all.length - OUTPUT_TAIL_BYTES));
        },
      });
      await this.state.environments.setCurrentSnapshot(spec.name, outcome.snapshotId, { agentsMd: outcome.agentsMd });
      const { agentsMd: _agentsMd, ...result } = outcome;
      Object.assign(job, { status: 'succeeded', result });
      log.info({ snapshotId: outcome.snapshotId, cacheHit: outcome.cacheHit }, 'prepare done');
    } catch (err) {
      Object.assign(job, { status: 'failed', error: errorMessage(err) });
      log.warn({ err: errorMessage(err) }, 'prepare failed');
    } finally {
      job.finishedAt = new Date().toISOString();
    }
  }

  private view(entry: JobEntry): PrepareJob {
    return { ...entry.job, outputTail: entry.output.toString('utf8') };
  }

  private forgetOld(): void {
    const finished = [...this.jobs.values()].filter((e) => e.job.status !== 'running');
    for (const entry of finished.slice(0, Math.max(0, finished.length - KEEP_FINISHED))) {
      this.jobs.delete(entry.job.id);
    }
  }
}
