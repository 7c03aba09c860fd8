import type { SnapshotStore, StoredSnapshot } from '../snapshot/store.js';
import { explainStale, type EnvInputs } from './cache-key.js';
import { resolveEnv } from './inputs.js';
import type { EnvSpec } from './spec.js';

/** The newest valid snapshot of an environment made from exactly these inputs. */
export async function findFresh(store: SnapshotStore, envName: string, cacheKey: string): Promise<StoredSnapshot | null> {
  const snapshots = await store.list({ envName });
  return snapshots.find((s) => s.valid && s.cacheKey === cacheKey) ?? null;
}

export interface EnvStatus {
  envName: string;
  state: 'fresh' | 'stale' | 'missing';
  /** One plain reason per changed input when stale; why there is none when missing. */
  reasons: string[];
  snapshotId: string | null;
  newestSnapshotId: string | null;
  cacheKey: string;
  commit: string;
}

/** Fresh when a valid snapshot matches the current inputs; else stale, with what changed
 * since the newest snapshot. */
export async function envStatus(spec: EnvSpec, store: SnapshotStore): Promise<EnvStatus> {
  const env = await resolveEnv(spec, { quiet: true });
  const snapshots = (await store.list({ envName: spec.name })).filter((s) => s.valid);
  const fresh = snapshots.find((s) => s.cacheKey === env.cacheKey);
  const base = { envName: spec.name, cacheKey: env.cacheKey, commit: env.commit };
  if (fresh) {
    return { ...base, state: 'fresh', reasons: [], snapshotId: fresh.id, newestSnapshotId: snapshots[0].id };
  }
  if (snapshots.length === 0) {
    return { ...base, state: 'missing', reasons: ['no snapshot yet; run `prewarm env prepare`'],
      snapshotId: null, newestSnapshotId: null };
  }
  const newest = snapshots[0];
  const reasons = explainStale(newest.manifest.inputs as unknown as EnvInputs, env.inputs);
  return { ...base, state: 'stale', reasons: reasons.length > 0 ? reasons : ['inputs changed'],
    snapshotId: null, newestSnapshotId: newest.id };
}
