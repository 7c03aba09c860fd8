import type { EnvSpec } from '../env/spec.js';
import type { PrepareResult } from '../env/prepare.js';
import type { EnvironmentStatus } from './schemas.js';

export type PrepareOutcome = Omit<PrepareResult, 'envName' | 'sizes'>;

/** What the API asks of the env part; unit tests swap in a fake that boots no VM. */
export interface EnvOps {
  prepare(spec: EnvSpec, opts: { force: boolean; onOutput: (chunk: Buffer) => void }): Promise<PrepareOutcome>;
  status(spec: EnvSpec): Promise<EnvironmentStatus>;
}

/** The real thing. The env part is imported on first use, so the service starts light. */
export const vmEnvOps: EnvOps = {
  async prepare(spec, opts) {
    const { prepareEnv } = await import('../env/prepare.js');
    const result = await prepareEnv(spec, { force: opts.force, quiet: true, onOutput: opts.onOutput });
    return {
      snapshotId: result.snapshotId, cacheHit: result.cacheHit, cacheKey: result.cacheKey,
      commit: result.commit, agentsMd: result.agentsMd, timingsMs: result.timingsMs,
    };
  },
  async status(spec) {
    const [{ envStatus }, { SnapshotStore }] = await Promise.all([
      import('../env/status.js'), import('../snapshot/store.js'),
    ]);
    return envStatus(spec, await SnapshotStore.open());
  },
};
