import { randomBytes } from 'node:crypto';
import { mkdir, rename, writeFile } from 'node:fs/promises';
import { isAbsolute, join } from 'node:path';
import { Document, isMap, parseDocument } from 'yaml';
import { parseSpec, type EnvSpec } from '../env/spec.js';
import { InputError } from '../util/errors.js';
import { prewarmHome } from '../util/paths.js';
import { badRequest } from './http-errors.js';
import type { FieldError } from './schemas.js';

export function specsDir(): string {
  return join(prewarmHome(), 'specs');
}

/**
 * A spec from an API request (YAML text or a JSON object, and an optional name that wins over
 * the spec's own), validated by the same parser as spec files. Returns the YAML text to store
 * (comments of YAML input kept). A bad spec is a 400 naming each field under `spec.`.
 */
export function specFromRequest(raw: string | Record<string, unknown>, name?: string): { spec: EnvSpec; text: string } {
  const doc = typeof raw === 'string' ? parseDocument(raw) : new Document(raw);
  if (doc.errors.length > 0) {
    throw badRequest(`spec is not valid YAML: ${doc.errors[0].message}`,
      [{ in: 'body', field: 'spec', message: doc.errors[0].message }]);
  }
  if (!isMap(doc.contents)) {
    throw badRequest('spec must be a mapping', [{ in: 'body', field: 'spec', message: 'expected a mapping' }]);
  }
  if (name !== undefined) doc.set('name', name);

  // A relative path would be relative to wherever the service stores the spec: refuse it.
  const path = doc.getIn(['repository', 'path']);
  if (typeof path === 'string' && !isAbsolute(path)) {
    const message = `must be an absolute path on the service host, got "${path}"`;
    throw badRequest(`spec.repository.path ${message}`, [{ in: 'body', field: 'spec.repository.path', message }]);
  }

  const text = doc.toString();
  try {
    return { spec: parseSpec(text, 'spec', specsDir()), text };
  } catch (err) {
    if (!(err instanceof InputError)) throw err;
    throw badRequest(`invalid environment spec: ${err.message.replace(/\n/g, '; ')}`, specFields(err.message));
  }
}

/** parseSpec's lines ("spec: repository.url: is required") as fields. */
function specFields(message: string): FieldError[] {
  return message.split('\n').map((line) => {
    const rest = line.replace(/^spec: /, '');
    const at = rest.indexOf(': ');
    const path = at < 0 ? '' : rest.slice(0, at);
    if (at < 0 || path === '(top level)' || /^line \d+$/.test(path) || /\s/.test(path)) {
      return { in: 'body', field: 'spec', message: rest };
    }
    return { in: 'body', field: `spec.${path}`, message: rest.slice(at + 2) };
  });
}

/** Write the spec to PREWARM_HOME/specs/<name>.yaml atomically; returns the path. */
export async function storeSpec(name: string, text: string): Promise<string> {
  await mkdir(specsDir(), { recursive: true });
  const path = join(specsDir(), `${name}.yaml`);
  const tmp = `${path}.${randomBytes(4).toString('hex')}.tmp`;
  await writeFile(tmp, text);
  await rename(tmp, path);
  return path;
}
