import type { FastifyError, FastifyInstance } from 'fastify';
import type { z } from 'zod';
import { InputError, NotFoundError, PrewarmError, errorMessage } from '../util/errors.js';
import type { ErrorResponse, FieldError } from './schemas.js';

/** An error with the HTTP status it answers with. */
export class ApiError extends PrewarmError {
  constructor(
    readonly statusCode: number,
    code: string,
    message: string,
    readonly fields?: FieldError[],
  ) {
    super(code, message);
  }
}

export function badRequest(message: string, fields: FieldError[]): ApiError {
  return new ApiError(400, 'BAD_INPUT', message, fields);
}

/** One entry per problem, with the dotted path of the field. */
export function zodFields(where: FieldError['in'], issues: z.core.$ZodIssue[], prefix = ''): FieldError[] {
  const join = (path: PropertyKey[]) =>
    [prefix, ...path.map(String)].filter(Boolean).join('.') || `(${where})`;
  return issues.flatMap((issue): FieldError[] => {
    if (issue.code === 'unrecognized_keys') {
      return issue.keys.map((key) => ({ in: where, field: join([...issue.path, key]), message: 'unknown field' }));
    }
    const message = issue.message.replace(/^Invalid input: /, '');
    return [{ in: where, field: join(issue.path), message }];
  });
}

export function errorBody(code: string, message: string, fields?: FieldError[]): ErrorResponse {
  return { error: { code, message, ...(fields && fields.length > 0 ? { fields } : {}) } };
}

/** Map every error to the API's error body: ours by class, fastify's own (bad JSON,
 * unsupported media type, body too large) by their status, the rest as 500. */
export function installErrorHandlers(app: FastifyInstance): void {
  app.setErrorHandler((err: FastifyError | Error, request, reply) => {
    if (err instanceof ApiError) {
      return reply.code(err.statusCode).send(errorBody(err.code, err.message, err.fields));
    }
    if (err instanceof NotFoundError) return reply.code(404).send(errorBody(err.code, err.message));
    if (err instanceof InputError) return reply.code(400).send(errorBody(err.code, err.message));
    if (err instanceof PrewarmError && err.code === 'CONFLICT') {
      return reply.code(409).send(errorBody(err.code, err.message));
    }
    // What the service depends on (the repository's remote) failed, not the service.
    if (err instanceof PrewarmError && err.code === 'REPO_UNREACHABLE') {
      return reply.code(502).send(errorBody(err.code, err.message));
    }
    const status = (err as FastifyError).statusCode;
    if (status !== undefined && status >= 400 && status < 500) {
      return reply.code(status).send(errorBody((err as FastifyError).code ?? 'BAD_REQUEST', err.message));
    }
    request.log.error({ err }, 'request failed');
    const code = err instanceof PrewarmError ? err.code : 'INTERNAL';
    return reply.code(500).send(errorBody(code, errorMessage(err)));
  });
  app.setNotFoundHandler((request, reply) => {
    reply.code(404).send(errorBody('NOT_FOUND', `no route ${request.method} ${request.url}; see /openapi.json`));
  });
}
