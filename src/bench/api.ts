import { readFile } from 'node:fs/promises';
import { startService } from '../api/service.js';
import { vmTaskRunner } from '../api/runner.js';
import type { EnvSpec } from '../env/spec.js';
import { budgetedVmSource } from '../pool/source.js';
import { PrewarmClient } from '../sdk/client.js';
import { openState } from '../state/db.js';
import { submitAndRun } from '../task/record.js';
import type { TaskRequest } from '../task/types.js';

/** The first command of every measured task: it prints at once, so its first output byte
 * marks "the first command is running" for both callers alike. */
const FIRST_COMMAND = 'echo first-command-running';

export interface ApiOverhead {
  /** Submission to the first command's output, through the library (submitAndRun, the
   * CLI's path), per round. */
  library: number[];
  /** The same through the HTTP service: POST /v1/tasks, then its SSE log stream. */
  api: number[];
  /** Of each API round: submission to the moment the service stored that first output
   * (so api minus this is the log stream's delivery). */
  apiStored: number[];
}

/**
 * Task submission to first command running, through the library and through the service,
 * in one run, rounds alternating so both see the same machine. Both restore a VM through the
 * memory budget (no warm pool: the service gets an explicit runner, which starts none), both
 * record the task in the state store. The service listens on loopback in this process.
 */
export async function measureApiOverhead(spec: EnvSpec, specPath: string, rounds: number): Promise<ApiOverhead> {
  const request: TaskRequest = { envName: spec.name, commands: [FIRST_COMMAND], noRebuild: true };
  const state = openState();
  await state.environments.upsert({ name: spec.name, specPath, specYaml: await readFile(specPath, 'utf8') });
  const service = await startService({ port: 0, runner: vmTaskRunner(state, budgetedVmSource()), concurrency: 1 });
  const client = new PrewarmClient({ baseUrl: service.url, token: service.token });
  const out: ApiOverhead = { library: [], api: [], apiStored: [] };
  try {
    for (let i = 0; i < rounds; i++) {
      out.library.push(await throughLibrary(state, spec, request));
      const { firstOutputMs, storedMs } = await throughApi(client, request);
      out.api.push(firstOutputMs);
      out.apiStored.push(storedMs);
    }
    return out;
  } finally {
    await service.shutdown(30_000);
    state.close();
  }
}

async function throughLibrary(state: ReturnType<typeof openState>, spec: EnvSpec, request: TaskRequest): Promise<number> {
  const startedAt = performance.now();
  let firstOutputAt = 0;
  const result = await submitAndRun(state, spec, request, {
    vmSource: budgetedVmSource(),
    onOutput: () => { firstOutputAt ||= performance.now(); },
  });
  if (result?.status !== 'succeeded' || !firstOutputAt) {
    throw new Error(`a library task on ${spec.name} did not succeed: ${result?.status} ${result?.message ?? ''}`);
  }
  return firstOutputAt - startedAt;
}

async function throughApi(client: PrewarmClient, request: TaskRequest): Promise<{ firstOutputMs: number; storedMs: number }> {
  const startedWall = Date.now();
  const startedAt = performance.now();
  const task = await client.createTask(request);
  for await (const entry of client.logEntries(task.id)) {
    if (entry.stream !== 'output') continue;
    const firstOutputMs = performance.now() - startedAt;
    const storedMs = Date.parse(entry.at) - startedWall;
    const done = await client.waitForTask(task.id, { timeoutMs: 120_000 });
    if (done.status !== 'succeeded') throw new Error(`API task ${task.id} did not succeed: ${done.status} ${done.error ?? ''}`);
    return { firstOutputMs, storedMs };
  }
  throw new Error(`API task ${task.id} ended without output`);
}
