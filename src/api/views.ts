import type { Environment as StoredEnvironment, Pool as StoredPool, Task } from '../state/db.js';
import type { Environment, Pool, TaskView } from './schemas.js';

/** State records as the API shows them: ISO times, no runner internals. */

export function taskView(task: Task): TaskView {
  return {
    id: task.id,
    envName: task.envName,
    status: task.status,
    request: task.request,
    result: task.result,
    error: task.error,
    createdAt: task.createdAt.toISOString(),
    startedAt: task.startedAt?.toISOString() ?? null,
    finishedAt: task.finishedAt?.toISOString() ?? null,
    snapshotId: task.snapshotId,
    vmId: task.vmId,
    peakMemoryBytes: task.peakMemoryBytes,
  };
}

export function environmentView(env: StoredEnvironment): Environment {
  return {
    name: env.name,
    specPath: env.specPath,
    spec: env.specYaml,
    currentSnapshotId: env.currentSnapshotId,
    hasAgentsMd: env.agentsMd !== null,
    createdAt: env.createdAt.toISOString(),
    updatedAt: env.updatedAt.toISOString(),
  };
}

export function poolView(envName: string, pool: StoredPool | undefined): Pool {
  return {
    envName,
    targetSize: pool?.targetSize ?? 0,
    updatedAt: pool?.updatedAt.toISOString() ?? null,
  };
}
