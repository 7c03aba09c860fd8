import type { FastifyInstance } from 'fastify';
import type { StateStore, Task } from '../state/db.js';
import { NotFoundError } from '../util/errors.js';
import { bind } from './bind.js';
import { requireEnv } from './handlers-environments.js';
import { ApiError } from './http-errors.js';
import type { LogStreams } from './log-stream.js';
import type { TaskQueue } from './queue.js';
import { routes } from './routes.js';
import { taskView } from './views.js';

async function requireTask(state: StateStore, id: string): Promise<Task> {
  const task = await state.tasks.get(id);
  if (!task) throw new NotFoundError(`task ${id} does not exist; GET /v1/tasks lists recent tasks`);
  return task;
}

/** The Last-Event-ID a reconnecting EventSource sends, when it is a sequence number. */
function lastEventId(header: string | string[] | undefined): number | undefined {
  const value = Number(Array.isArray(header) ? header[0] : header);
  return Number.isInteger(value) && value >= 0 ? value : undefined;
}

/** Tasks: submit, list, get, log stream, diff, cancel. */
export function taskHandlers(
  app: FastifyInstance, deps: { state: StateStore; queue: TaskQueue; streams: LogStreams },
): void {
  const { state, queue, streams } = deps;

  bind(app, routes.createTask, async ({ body }, _request, reply) => {
    await requireEnv(state, body.envName);
    const task = await state.tasks.create({ envName: body.envName, request: body });
    queue.kick();
    reply.code(202);
    return taskView(task);
  });

  bind(app, routes.listTasks, async ({ query }) => ({
    tasks: (await state.tasks.list({ envName: query.env, status: query.status, limit: query.limit }))
      .map(taskView),
  }));

  bind(app, routes.getTask, async ({ params }) => taskView(await requireTask(state, params.id)));

  bind(app, routes.taskLog, async ({ params, query }, request, reply) => {
    await requireTask(state, params.id);
    const after = query.after ?? lastEventId(request.headers['last-event-id']) ?? 0;
    await streams.serve(reply, params.id, after);
  });

  bind(app, routes.taskDiff, async ({ params }, _request, reply) => {
    const task = await requireTask(state, params.id);
    const diff = await state.taskLogs.getDiff(params.id);
    if (!diff) {
      throw new NotFoundError(`task ${params.id} has no diff (status ${task.status}); a diff is ` +
        'stored once the task\'s commands have run');
    }
    if (diff.tooLarge) {
      const size = Number(diff.stats.sizeBytes ?? 0);
      throw new ApiError(409, 'DIFF_TOO_LARGE', `the diff of task ${params.id} is too large ` +
        `(${size} bytes) and was not kept; make the task's change smaller`);
    }
    return reply.type('text/x-diff').send(diff.patch);
  });

  bind(app, routes.cancelTask, async ({ params }) => taskView(await queue.cancel(params.id)));
}
