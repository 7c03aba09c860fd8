import { z } from 'zod';
import { POOL_MAX_SIZE } from '../pool/size.js';
import { TASK_STATUSES } from '../state/tasks.js';

/**
 * The API's request and response shapes. The server validates requests with these schemas,
 * the OpenAPI document is generated from them, and the SDK takes its types from them, so the
 * three cannot drift apart. Request schemas are strict: an unknown field is a 400.
 *
 * Schemas registered in `requestSchemas` / `responseSchemas` become named components of the
 * OpenAPI document (requests in their input form, responses in their output form).
 */
export const requestSchemas = z.registry<{ id: string; description?: string }>();
export const responseSchemas = z.registry<{ id: string; description?: string }>();

const time = (description: string) => z.string().meta({ format: 'date-time', description });
const nullableTime = (description: string) =>
  z.string().nullable().meta({ format: 'date-time', description });

export const EnvName = z.string().max(63).regex(/^[a-z0-9][a-z0-9-]*$/, {
  error: 'must be a slug: lowercase letters, digits and dashes, not starting with a dash',
});

// --- parameters ---------------------------------------------------------------------------

export const EnvParams = z.strictObject({ name: EnvName });
export const PoolParams = z.strictObject({ env: EnvName });
export const IdParams = z.strictObject({ id: z.string().min(1).max(200) });
export const LogQuery = z.strictObject({
  after: z.coerce.number().int().min(0).optional()
    .describe('Resume after this log sequence number (as the Last-Event-ID header does)'),
});

// --- requests -----------------------------------------------------------------------------

export const CreateEnvironmentRequest = z.strictObject({
  name: EnvName.optional()
    .describe("The environment's name; overrides the spec's own `name` when given"),
  spec: z.union([z.string().min(1), z.record(z.string(), z.unknown())])
    .describe('The environment spec: YAML text, or the same document as a JSON object. ' +
      'repository.path, when used, must be absolute (a path on the service host).'),
});
requestSchemas.add(CreateEnvironmentRequest, { id: 'CreateEnvironmentRequest' });

export const PrepareRequest = z.strictObject({
  force: z.boolean().optional().describe('Build a new snapshot even when a fresh one exists'),
});
requestSchemas.add(PrepareRequest, { id: 'PrepareRequest' });

export const CreateTaskRequest = z.strictObject({
  envName: EnvName.describe('A registered environment'),
  commands: z.array(z.string().min(1).max(100_000).refine((c) => !c.includes('\0'), 'must not contain a NUL byte')).min(1).max(1000)
    .describe('Shell commands run one after another in the repository; the first failure stops'),
  commit: z.string().min(1).max(200).optional()
    .describe("Check out this commit (or ref of the environment's repository) first"),
  timeoutSeconds: z.number().int().positive().max(7 * 86_400).optional()
    .describe('Wall-clock limit for all commands; default from the environment spec'),
  allowStale: z.boolean().optional().describe('Run on a stale snapshot instead of rebuilding it'),
  noRebuild: z.boolean().optional().describe('Refuse instead of rebuilding a stale snapshot'),
});
requestSchemas.add(CreateTaskRequest, { id: 'CreateTaskRequest' });

export const SetPoolRequest = z.strictObject({
  targetSize: z.number().int().min(0).max(POOL_MAX_SIZE)
    .describe('How many warm VMs to keep restored for the environment'),
});
requestSchemas.add(SetPoolRequest, { id: 'SetPoolRequest' });

// --- responses ----------------------------------------------------------------------------

export const ErrorResponse = z.strictObject({
  error: z.strictObject({
    code: z.string().describe('Stable error code, e.g. BAD_INPUT, NOT_FOUND, UNAUTHORIZED'),
    message: z.string(),
    fields: z.array(z.strictObject({
      in: z.enum(['body', 'params', 'query']),
      field: z.string().describe('Dotted path of the bad field, e.g. commands.0'),
      message: z.string(),
    })).optional().describe('For a 400: every field that is wrong'),
  }),
});
responseSchemas.add(ErrorResponse, { id: 'Error' });

export const Health = z.strictObject({
  status: z.enum(['ok', 'draining']),
  version: z.string(),
  uptimeSeconds: z.number(),
});
responseSchemas.add(Health, { id: 'Health' });

export const Environment = z.strictObject({
  name: z.string(),
  specPath: z.string().describe('Where the spec file lives on the service host'),
  spec: z.string().describe('The spec as YAML text'),
  currentSnapshotId: z.string().nullable(),
  hasAgentsMd: z.boolean(),
  createdAt: time('When the environment was first registered'),
  updatedAt: time('Last change to the spec or the current snapshot'),
});
responseSchemas.add(Environment, { id: 'Environment' });

export const EnvironmentList = z.strictObject({ environments: z.array(Environment) });
responseSchemas.add(EnvironmentList, { id: 'EnvironmentList' });

export const EnvironmentStatus = z.strictObject({
  envName: z.string(),
  state: z.enum(['fresh', 'stale', 'missing']),
  reasons: z.array(z.string()).describe('When stale: one plain reason per changed input'),
  snapshotId: z.string().nullable(),
  newestSnapshotId: z.string().nullable(),
  cacheKey: z.string(),
  commit: z.string(),
});
responseSchemas.add(EnvironmentStatus, { id: 'EnvironmentStatus' });

export const PrepareJob = z.strictObject({
  id: z.string(),
  kind: z.literal('prepare'),
  envName: z.string(),
  status: z.enum(['running', 'succeeded', 'failed']),
  force: z.boolean(),
  createdAt: time('When the job started'),
  finishedAt: nullableTime('When it ended'),
  result: z.strictObject({
    snapshotId: z.string(),
    cacheHit: z.boolean(),
    cacheKey: z.string(),
    commit: z.string(),
    timingsMs: z.record(z.string(), z.number()),
  }).nullable(),
  error: z.string().nullable(),
  outputTail: z.string().describe('The last 64 KiB of the guest output of clone and setup'),
});
responseSchemas.add(PrepareJob, { id: 'PrepareJob' });

export const TaskStatus = z.enum(TASK_STATUSES);
responseSchemas.add(TaskStatus, { id: 'TaskStatus' });

export const Task = z.strictObject({
  id: z.string(),
  envName: z.string(),
  status: TaskStatus,
  request: z.record(z.string(), z.unknown()).describe('The request as submitted'),
  result: z.record(z.string(), z.unknown()).nullable()
    .describe('Exit codes, peak memory, timings (timingsMs), diff stats; the patch is at /diff'),
  error: z.string().nullable().describe("Why the task ended in 'error'"),
  createdAt: time('When it was submitted'),
  startedAt: nullableTime('When a worker took it'),
  finishedAt: nullableTime('When it ended'),
  snapshotId: z.string().nullable(),
  vmId: z.string().nullable(),
  peakMemoryBytes: z.number().nullable(),
});
responseSchemas.add(Task, { id: 'Task' });

export const TaskList = z.strictObject({ tasks: z.array(Task) });
responseSchemas.add(TaskList, { id: 'TaskList' });

export const TaskListQuery = z.strictObject({
  env: EnvName.optional(),
  status: TaskStatus.optional(),
  limit: z.coerce.number().int().min(1).max(1000).optional(),
});

export const Pool = z.strictObject({
  envName: z.string(),
  targetSize: z.number().int(),
  updatedAt: nullableTime('Last change; null when never set (target 0)'),
});
responseSchemas.add(Pool, { id: 'Pool' });

export const LogEntry = z.strictObject({
  seq: z.number().int(),
  stream: z.enum(['output', 'event']),
  text: z.string().optional().describe('The chunk, when it is valid UTF-8'),
  base64: z.string().optional().describe('The chunk in base64, when it is not'),
  at: time('When it was written'),
});
responseSchemas.add(LogEntry, { id: 'LogEntry' });

export type CreateEnvironmentRequest = z.input<typeof CreateEnvironmentRequest>;
export type PrepareRequest = z.input<typeof PrepareRequest>;
export type CreateTaskRequest = z.input<typeof CreateTaskRequest>;
export type SetPoolRequest = z.input<typeof SetPoolRequest>;
export type ErrorResponse = z.output<typeof ErrorResponse>;
export type FieldError = NonNullable<ErrorResponse['error']['fields']>[number];
export type Health = z.output<typeof Health>;
export type Environment = z.output<typeof Environment>;
export type EnvironmentStatus = z.output<typeof EnvironmentStatus>;
export type PrepareJob = z.output<typeof PrepareJob>;
export type TaskView = z.output<typeof Task>;
export type Pool = z.output<typeof Pool>;
export type LogEntry = z.output<typeof LogEntry>;
