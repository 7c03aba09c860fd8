import { readFile } from 'node:fs/promises';
import { describe, expect, it } from 'vitest';
import { buildOpenApi, OPENAPI_PATH, renderOpenApi } from '../../src/api/openapi.js';
import { routes } from '../../src/api/routes.js';

describe('OpenAPI document', () => {
  it('is checked in as generated (run `npm run openapi` after changing a route or schema)', async () => {
    const checkedIn = await readFile(OPENAPI_PATH, 'utf8').catch(() => '(missing)');
    expect(checkedIn, 'docs/openapi.json is stale: run `npm run openapi`').toBe(renderOpenApi());
  });

  it('describes every route, with the request schemas that validate it', () => {
    const doc = buildOpenApi() as {
      openapi: string;
      paths: Record<string, Record<string, { operationId: string; requestBody?: unknown; responses: Record<string, unknown> }>>;
      components: { schemas: Record<string, { required?: string[] }> };
    };
    expect(doc.openapi).toBe('3.1.0');
    const operations = Object.values(doc.paths).flatMap((methods) => Object.values(methods));
    expect(operations.map((o) => o.operationId).sort()).toEqual(Object.values(routes).map((r) => r.operationId).sort());
    expect(doc.paths['/v1/tasks/{id}'].get.responses).toHaveProperty('404');
    expect(doc.paths['/v1/tasks'].post.responses).toHaveProperty('400');
    expect(doc.paths['/v1/tasks'].post.responses).toHaveProperty('401');
    expect(doc.paths['/health'].get.responses).not.toHaveProperty('401');
    expect(doc.components.schemas.CreateTaskRequest.required).toEqual(['envName', 'commands']);
  });
});
