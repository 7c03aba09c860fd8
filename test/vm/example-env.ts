import { dirname, join } from 'node:path';
import { materializeExample } from '../../src/env/example.js';
import { prepareEnv } from '../../src/env/prepare.js';
import { loadSpec, type EnvSpec } from '../../src/env/spec.js';

/** The bundled example, prepared once per test process (a cache hit across files: same
 * inputs, same snapshot). Tests must not change the example's repository: copy it instead. */
export interface PreparedExample {
  spec: EnvSpec;
  specPath: string;
  snapshotId: string;
  /** The example's git repository on the host (PREWARM_HOME/examples/hello-node). */
  repoDir: string;
  /** Whether this call found the snapshot already made. */
  cacheHit: boolean;
}

let prepared: Promise<PreparedExample> | undefined;

export function preparedExample(): Promise<PreparedExample> {
  prepared ??= (async () => {
    const specPath = await materializeExample();
    const spec = await loadSpec(specPath);
    const result = await prepareEnv(spec, { quiet: true });
    return {
      spec, specPath, snapshotId: result.snapshotId, cacheHit: result.cacheHit,
      repoDir: spec.repository.path ?? join(dirname(specPath), 'hello-node'),
    };
  })();
  // A failed prepare is not remembered: the next caller tries again.
  prepared.catch(() => { prepared = undefined; });
  return prepared;
}
