import type { FastifyInstance } from 'fastify';
import { loadSpec } from '../env/spec.js';
import type { Environment, StateStore } from '../state/db.js';
import { NotFoundError } from '../util/errors.js';
import { bind } from './bind.js';
import type { EnvOps } from './env-ops.js';
import type { PrepareJobs } from './prepare-jobs.js';
import { routes } from './routes.js';
import { specFromRequest, storeSpec } from './spec-input.js';
import { environmentView, poolView } from './views.js';

export async function requireEnv(state: StateStore, name: string): Promise<Environment> {
  const env = await state.environments.get(name);
  if (!env) {
    throw new NotFoundError(`environment ${name} is not registered; register it with ` +
      'POST /v1/environments (GET /v1/environments lists the known ones)');
  }
  return env;
}

/** Environments (create, list, get, status, prepare, its jobs) and pools. */
export function environmentHandlers(
  app: FastifyInstance, deps: { state: StateStore; envOps: EnvOps; jobs: PrepareJobs },
): void {
  const { state, envOps, jobs } = deps;

  bind(app, routes.createEnvironment, async ({ body }, _request, reply) => {
    const { spec, text } = specFromRequest(body.spec, body.name);
    const existed = await state.environments.get(spec.name);
    const specPath = await storeSpec(spec.name, text);
    const env = await state.environments.upsert({ name: spec.name, specPath, specYaml: text });
    reply.code(existed ? 200 : 201);
    return environmentView(env);
  });

  bind(app, routes.listEnvironments, async () => ({
    environments: (await state.environments.list()).map(environmentView),
  }));

  bind(app, routes.getEnvironment, async ({ params }) =>
    environmentView(await requireEnv(state, params.name)));

  bind(app, routes.environmentStatus, async ({ params }) => {
    const env = await requireEnv(state, params.name);
    return envOps.status(await loadSpec(env.specPath));
  });

  bind(app, routes.prepareEnvironment, async ({ params, body }, _request, reply) => {
    const env = await requireEnv(state, params.name);
    const job = jobs.start(await loadSpec(env.specPath), body.force ?? false);
    reply.code(202);
    return job;
  });

  bind(app, routes.getJob, async ({ params }) => {
    const job = jobs.get(params.id);
    if (!job) {
      throw new NotFoundError(`job ${params.id} does not exist; jobs are kept in memory and ` +
        'forgotten on restart: prepare again (a fresh snapshot is a cache hit)');
    }
    return job;
  });

  bind(app, routes.getPool, async ({ params }) => {
    await requireEnv(state, params.env);
    return poolView(params.env, await state.pools.get(params.env));
  });

  bind(app, routes.setPool, async ({ params, body }) => {
    await requireEnv(state, params.env);
    return poolView(params.env, await state.pools.set(params.env, body.targetSize));
  });
}
