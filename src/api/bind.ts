import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { z } from 'zod';
import { badRequest, zodFields } from './http-errors.js';
import type { RouteSpec } from './routes.js';
import type { FieldError } from './schemas.js';

type Parsed<R, K extends string> = R extends { [P in K]: infer S extends z.ZodType } ? z.output<S> : undefined;

export interface RouteInput<R extends RouteSpec> {
  params: Parsed<R, 'params'>;
  query: Parsed<R, 'query'>;
  body: Parsed<R, 'body'>;
}

export type RouteHandler<R extends RouteSpec> =
  (input: RouteInput<R>, request: FastifyRequest, reply: FastifyReply) => Promise<unknown>;

/**
 * Register a route of the table with its handler. Params, query and body are validated by
 * the route's zod schemas before the handler runs; every bad field of all three is reported
 * in one 400.
 */
export function bind<R extends RouteSpec>(app: FastifyInstance, route: R, handler: RouteHandler<R>): void {
  app.route({
    method: route.method,
    url: route.url,
    handler: async (request, reply) => {
      const fields: FieldError[] = [];
      const parse = (schema: z.ZodType | undefined, value: unknown, where: FieldError['in']) => {
        if (!schema) return undefined;
        const result = schema.safeParse(value);
        if (result.success) return result.data;
        fields.push(...zodFields(where, result.error.issues));
        return undefined;
      };
      const body = request.body ?? (route.bodyOptional ? {} : undefined);
      const input = {
        params: parse(route.params, request.params, 'params'),
        query: parse(route.query, request.query, 'query'),
        body: parse(route.body, body, 'body'),
      };
      if (fields.length > 0) {
        const list = fields.map((f) => `${f.in === 'body' ? '' : `${f.in} `}${f.field}: ${f.message}`);
        throw badRequest(`invalid request: ${list.join('; ')}`, fields);
      }
      return handler(input as RouteInput<R>, request, reply);
    },
  });
}
