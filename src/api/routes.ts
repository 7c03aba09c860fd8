import type { z } from 'zod';
import * as s from './schemas.js';

/**
 * Every route of the API, as data: method, path, the schemas of its input and its responses.
 * The server binds a handler to each (app.ts), and the OpenAPI document is generated from
 * this table (openapi.ts); nothing else describes a route.
 */
export interface ResponseSpec {
  description: string;
  /** JSON body schema; omit for a non-JSON body (see contentType). */
  schema?: z.ZodType;
  /** Default application/json. */
  contentType?: string;
}

export interface RouteSpec {
  method: 'GET' | 'POST' | 'PUT';
  /** Fastify syntax: /v1/tasks/:id */
  url: string;
  operationId: string;
  summary: string;
  description?: string;
  tag: 'system' | 'environments' | 'tasks' | 'pools';
  /** Default true: the bearer token is required. */
  auth?: boolean;
  params?: z.ZodObject;
  query?: z.ZodObject;
  body?: z.ZodType;
  /** A body is optional (an empty POST is the same as {}). */
  bodyOptional?: boolean;
  responses: Record<number, ResponseSpec>;
}

const json = (description: string, schema: z.ZodType): ResponseSpec => ({ description, schema });
const notFound = (what: string) => json(`No such ${what}`, s.ErrorResponse);

export const routes = {
  health: {
    method: 'GET', url: '/health', operationId: 'health', tag: 'system', auth: false,
    summary: 'Liveness; the only route open without the token',
    responses: { 200: json('Serving', s.Health), 503: json('Shutting down', s.Health) },
  },
  metrics: {
    method: 'GET', url: '/metrics', operationId: 'metrics', tag: 'system',
    summary: 'Prometheus metrics (text exposition format 0.0.4)',
    responses: { 200: { description: 'Metrics', contentType: 'text/plain; version=0.0.4' } },
  },
  openapi: {
    method: 'GET', url: '/openapi.json', operationId: 'openapi', tag: 'system',
    summary: 'This document',
    responses: { 200: { description: 'OpenAPI 3.1 document', contentType: 'application/json' } },
  },

  createEnvironment: {
    method: 'POST', url: '/v1/environments', operationId: 'createEnvironment', tag: 'environments',
    summary: 'Register or replace an environment from its spec',
    description: 'The spec is validated, stored under PREWARM_HOME/specs/<name>.yaml and ' +
      'registered. Nothing is prepared: call prepare next.',
    body: s.CreateEnvironmentRequest,
    responses: {
      200: json('Replaced an environment of that name', s.Environment),
      201: json('Registered', s.Environment),
    },
  },
  listEnvironments: {
    method: 'GET', url: '/v1/environments', operationId: 'listEnvironments', tag: 'environments',
    summary: 'Registered environments, by name',
    responses: { 200: json('Environments', s.EnvironmentList) },
  },
  getEnvironment: {
    method: 'GET', url: '/v1/environments/:name', operationId: 'getEnvironment', tag: 'environments',
    summary: 'One environment', params: s.EnvParams,
    responses: { 200: json('The environment', s.Environment), 404: notFound('environment') },
  },
  environmentStatus: {
    method: 'GET', url: '/v1/environments/:name/status', operationId: 'environmentStatus',
    tag: 'environments', params: s.EnvParams,
    summary: 'Fresh, stale (and which input changed) or missing',
    responses: {
      200: json('Status', s.EnvironmentStatus), 404: notFound('environment'),
      502: json('The repository cannot be reached, so freshness is unknown (REPO_UNREACHABLE)', s.ErrorResponse),
    },
  },
  prepareEnvironment: {
    method: 'POST', url: '/v1/environments/:name/prepare', operationId: 'prepareEnvironment',
    tag: 'environments', params: s.EnvParams, body: s.PrepareRequest, bodyOptional: true,
    summary: 'Start preparing (snapshotting) an environment',
    description: 'Returns at once with a job to poll at /v1/jobs/{id}. While a prepare of the ' +
      'environment runs, a second request returns the same job. Jobs live in the service ' +
      'memory: a restart forgets them (the snapshots they made stay).',
    responses: { 202: json('Started, or already running', s.PrepareJob), 404: notFound('environment') },
  },
  getJob: {
    method: 'GET', url: '/v1/jobs/:id', operationId: 'getJob', tag: 'environments',
    summary: 'A prepare job', params: s.IdParams,
    responses: { 200: json('The job', s.PrepareJob), 404: notFound('job') },
  },

  createTask: {
    method: 'POST', url: '/v1/tasks', operationId: 'createTask', tag: 'tasks',
    summary: 'Queue a task; returns at once',
    description: 'The task is stored as queued and runs when a worker slot is free. It ' +
      'survives a restart of the service.',
    body: s.CreateTaskRequest,
    responses: { 202: json('Queued', s.Task), 404: notFound('environment') },
  },
  listTasks: {
    method: 'GET', url: '/v1/tasks', operationId: 'listTasks', tag: 'tasks',
    summary: 'Recent tasks, newest first', query: s.TaskListQuery,
    responses: { 200: json('Tasks', s.TaskList) },
  },
  getTask: {
    method: 'GET', url: '/v1/tasks/:id', operationId: 'getTask', tag: 'tasks',
    summary: 'A task, with its result once it has ended', params: s.IdParams,
    responses: { 200: json('The task', s.Task), 404: notFound('task') },
  },
  taskLog: {
    method: 'GET', url: '/v1/tasks/:id/log', operationId: 'taskLog', tag: 'tasks',
    summary: 'Live log as server-sent events',
    description: 'Replays the stored chunks, then follows new ones until the task ends. Each ' +
      'chunk is an event named `output` (what the commands wrote) or `event` (prewarm\'s ' +
      'progress), with `id` = its sequence number and a LogEntry as JSON data. The stream ' +
      'ends with an `end` event whose data is {"status": ...}. Send Last-Event-ID (or ' +
      '?after=) to resume.',
    params: s.IdParams, query: s.LogQuery,
    responses: {
      200: { description: 'Event stream of LogEntry', contentType: 'text/event-stream' },
      404: notFound('task'),
    },
  },
  taskDiff: {
    method: 'GET', url: '/v1/tasks/:id/diff', operationId: 'taskDiff', tag: 'tasks',
    summary: "The task's change as a git diff (byte-exact)", params: s.IdParams,
    responses: {
      200: { description: 'The patch (empty when nothing changed)', contentType: 'text/x-diff' },
      404: notFound('task, or the task has no diff (yet)'),
      409: json('The diff exceeded the size limit and was not kept', s.ErrorResponse),
    },
  },
  cancelTask: {
    method: 'POST', url: '/v1/tasks/:id/cancel', operationId: 'cancelTask', tag: 'tasks',
    summary: 'Cancel a queued or running task',
    description: 'A queued task is cancelled at once. A running one is marked cancelled and ' +
      'its VM destroyed; the worker slot frees when the VM is gone.',
    params: s.IdParams,
    responses: {
      200: json('Cancelled', s.Task), 404: notFound('task'),
      409: json('Already ended, or run by another process', s.ErrorResponse),
    },
  },

  getPool: {
    method: 'GET', url: '/v1/pools/:env', operationId: 'getPool', tag: 'pools',
    summary: 'Warm pool target of an environment', params: s.PoolParams,
    responses: { 200: json('The pool', s.Pool), 404: notFound('environment') },
  },
  setPool: {
    method: 'PUT', url: '/v1/pools/:env', operationId: 'setPool', tag: 'pools',
    summary: 'Set the warm pool target of an environment',
    description: 'Stored; the pool manager keeps that many VMs restored.',
    params: s.PoolParams, body: s.SetPoolRequest,
    responses: { 200: json('The pool', s.Pool), 404: notFound('environment') },
  },
} as const satisfies Record<string, RouteSpec>;

export type RouteName = keyof typeof routes;
