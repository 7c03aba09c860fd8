import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { chmod, mkdir, readFile, stat, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import type { FastifyInstance } from 'fastify';
import { PrewarmError } from '../util/errors.js';
import { logger } from '../util/log.js';
import { prewarmHome } from '../util/paths.js';
import { errorBody } from './http-errors.js';

export function tokenPath(): string {
  return join(prewarmHome(), 'api-token');
}

/**
 * The service's bearer token: read from `path`, or created there on first start (32 random
 * bytes, base64url, mode 0600). A token file others can read is made private again.
 */
export async function loadOrCreateToken(path = tokenPath()): Promise<{ token: string; created: boolean }> {
  await mkdir(dirname(path), { recursive: true });
  try {
    await writeFile(path, `${randomBytes(32).toString('base64url')}\n`, { mode: 0o600, flag: 'wx' });
    return { token: await readToken(path), created: true };
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
  }
  if (((await stat(path)).mode & 0o077) !== 0) {
    logger({ part: 'api' }).warn({ path }, 'the API token file was readable by others; made it 0600');
    await chmod(path, 0o600);
  }
  return { token: await readToken(path), created: false };
}

async function readToken(path: string): Promise<string> {
  const token = (await readFile(path, 'utf8')).trim();
  if (token.length < 16) {
    throw new PrewarmError('API_TOKEN', `the API token in ${path} is shorter than 16 characters; ` +
      'delete the file and restart the service to make a new one');
  }
  return token;
}

/** Constant-time comparison (hashing first makes the lengths equal). */
export function tokenMatches(given: string, expected: string): boolean {
  const digest = (value: string) => createHash('sha256').update(value).digest();
  return timingSafeEqual(digest(given), digest(expected));
}

/** Every request needs `Authorization: Bearer <token>`, except routes marked open. */
export function installAuth(app: FastifyInstance, token: string, openUrls: ReadonlySet<string>): void {
  app.addHook('onRequest', async (request, reply) => {
    const url = request.routeOptions.url;
    if (request.method === 'GET' && url !== undefined && openUrls.has(url)) return;
    const header = request.headers.authorization ?? '';
    const match = /^Bearer\s+(\S+)\s*$/i.exec(header);
    if (match && tokenMatches(match[1], token)) return;
    reply.code(401).header('www-authenticate', 'Bearer').send(errorBody('UNAUTHORIZED', match
      ? 'wrong bearer token; the token is in PREWARM_HOME/api-token on the service host'
      : 'send Authorization: Bearer <token>; the token is in PREWARM_HOME/api-token on the service host'));
    return reply;
  });
}
