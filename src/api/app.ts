import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance } from 'fastify';
import type { StateStore } from '../state/db.js';
import { logger } from '../util/log.js';
import { installAuth } from './auth.js';
import { bind } from './bind.js';
import { vmEnvOps, type EnvOps } from './env-ops.js';
import { environmentHandlers } from './handlers-environments.js';
import { taskHandlers } from './handlers-tasks.js';
import { installErrorHandlers } from './http-errors.js';
import { LogStreams } from './log-stream.js';
import { ServiceMetrics } from './metrics.js';
import { apiVersion, buildOpenApi } from './openapi.js';
import { PrepareJobs } from './prepare-jobs.js';
import type { TaskQueue } from './queue.js';
import { routes, type RouteSpec } from './routes.js';

export interface AppDeps {
  state: StateStore;
  token: string;
  queue: TaskQueue;
  /** Default: the real env part (prepare boots a VM). */
  envOps?: EnvOps;
  metrics?: ServiceMetrics;
  /** How often a log stream polls for new chunks; default 200. */
  logPollMs?: number;
  /** True once shutdown began: /health answers 503. */
  draining?: () => boolean;
}

export interface Api {
  app: FastifyInstance;
  streams: LogStreams;
  jobs: PrepareJobs;
  metrics: ServiceMetrics;
}

/** The HTTP API over a state store and a task queue, ready to listen (or to `inject`). */
export function buildApp(deps: AppDeps): Api {
  const { state, queue } = deps;
  const startedAt = Date.now();
  const log = logger({ part: 'api' }) as FastifyBaseLogger;
  // One line per request, from the onResponse hook below, instead of fastify's two.
  const app = Fastify({
    loggerInstance: log,
    logController: new LogController({ disableRequestLogging: true }),
    return503OnClosing: true,
    // Long ids reach the routes (and auth, then 404) instead of fastify's own 414 body.
    maxParamLength: 2048,
  });
  const streams = new LogStreams(state, (id) => queue.isActive(id), deps.logPollMs);
  const jobs = new PrepareJobs(state, deps.envOps ?? vmEnvOps);
  const metrics = deps.metrics ?? new ServiceMetrics(state);

  installErrorHandlers(app);
  const open = (Object.values(routes) as RouteSpec[]).filter((r) => r.auth === false).map((r) => r.url);
  installAuth(app, deps.token, new Set(open));
  app.addHook('onResponse', async (request, reply) => {
    request.log.info({ method: request.method, url: request.url, status: reply.statusCode,
      ms: Math.round(reply.elapsedTime) }, 'request');
  });

  bind(app, routes.health, async (_input, _request, reply) => {
    const draining = deps.draining?.() ?? false;
    reply.code(draining ? 503 : 200);
    return {
      status: draining ? 'draining' : 'ok', version: apiVersion(),
      uptimeSeconds: Math.round((Date.now() - startedAt) / 1000),
    };
  });

  bind(app, routes.metrics, async (_input, _request, reply) => reply
    .type('text/plain; version=0.0.4; charset=utf-8')
    .send(await metrics.render({ running: queue.running, concurrency: queue.concurrency })));

  const document = buildOpenApi();
  bind(app, routes.openapi, async () => document);

  environmentHandlers(app, { state, envOps: deps.envOps ?? vmEnvOps, jobs });
  taskHandlers(app, { state, queue, streams });
  return { app, streams, jobs, metrics };
}
