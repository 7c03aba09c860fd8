import { existsSync } from 'node:fs';
import { resolve } from 'node:path';
import { openState } from '../state/db.js';
import { NotFoundError } from '../util/errors.js';
import { loadSpec, type EnvSpec } from './spec.js';

/** An environment named by its spec file, or by the name a prepare recorded. */
export async function specFor(nameOrPath: string): Promise<{ spec: EnvSpec; specPath: string }> {
  if (existsSync(nameOrPath) || /\.ya?ml$/.test(nameOrPath)) {
    return { spec: await loadSpec(resolve(nameOrPath)), specPath: resolve(nameOrPath) };
  }
  const state = openState();
  try {
    const env = await state.environments.get(nameOrPath);
    if (!env) {
      throw new NotFoundError(`no environment ${nameOrPath}; prepare it first with ` +
        '`prewarm env prepare SPEC.yaml` (`prewarm env ls` lists the known ones)');
    }
    return { spec: await loadSpec(env.specPath), specPath: env.specPath };
  } finally {
    state.close();
  }
}
