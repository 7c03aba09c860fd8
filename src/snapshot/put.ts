import { mkdir, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { SNAPSHOT_FILES } from '../engine/snapshot-format.js';
import { step, type Logger } from '../util/log.js';
import { fsyncPath, settleAll, tmpName, writeJsonAtomic } from './atomic-fs.js';
import { compressFile } from './compress.js';
import { digestFile, verifyEngineSnapshotDir } from './hash-cache.js';
import { hostFault } from './host-fault.js';
import {
  compressedName,
  newSnapshotId,
  readStored,
  storeDir,
  type StoreLayout,
  type StoredSnapshot,
} from './layout.js';
import { STORE_MANIFEST, type StoreManifest } from './manifest.js';

export interface PutMeta {
  envName: string;
  cacheKey: string;
  /** Everything the snapshot was made from (image digest, commit, lockfiles...); opaque here. */
  inputs: Record<string, unknown>;
  agentsMd?: string | null;
}

export interface PutResult extends StoredSnapshot {
  verifyMs: number;
  compressMs: number;
  totalMs: number;
}

/**
 * Store an engine snapshot directory: verify it against its own manifest, compress the three
 * files in parallel into ROOT/.tmp-<id>-..., write manifest.json last, fsync, and rename the
 * directory to ROOT/<id>. Until that rename nothing is visible; an interrupted put leaves only
 * a `.tmp-*` directory for `reapIncomplete`.
 */
export async function putSnapshot(
  layout: StoreLayout,
  engineDir: string,
  meta: PutMeta,
  log: Logger,
): Promise<PutResult> {
  const startedAt = performance.now();
  const engine = await step(log, 'verify-engine-dir', () => verifyEngineSnapshotDir(engineDir));
  const verifyMs = performance.now() - startedAt;

  const id = newSnapshotId();
  const tmpDir = join(layout.rootDir, tmpName(id));
  try {
    await mkdir(layout.rootDir, { recursive: true });
    await mkdir(tmpDir);
  } catch (err) {
    throw hostFault(err, `creating ${tmpDir} for a new snapshot`);
  }

  try {
    const compressStartedAt = performance.now();
    await step(log.child({ snapshotId: id }), 'compress', () =>
      settleAll(
        SNAPSHOT_FILES.map((name) =>
          compressFile(join(engineDir, name), join(tmpDir, compressedName(name))),
        ),
      ),
    );
    const compressMs = performance.now() - compressStartedAt;

    // Hashing the compressed files also seeds the hash cache, which moves with the directory.
    const compressed = await settleAll(
      SNAPSHOT_FILES.map(async (name) => {
        const path = join(tmpDir, compressedName(name));
        await fsyncPath(path);
        return digestFile(path);
      }),
    );
    const files = Object.fromEntries(
      SNAPSHOT_FILES.map((name, i) => [
        name,
        { raw: engine.files[name], compressed: { name: compressedName(name), ...compressed[i] } },
      ]),
    ) as StoreManifest['files'];

    const manifest: StoreManifest = {
      formatVersion: 1,
      id,
      envName: meta.envName,
      cacheKey: meta.cacheKey,
      inputs: meta.inputs,
      agentsMd: meta.agentsMd ?? null,
      createdAt: new Date().toISOString(),
      engine,
      files,
    };
    await writeJsonAtomic(join(tmpDir, STORE_MANIFEST), manifest, { fsync: true });
    await fsyncPath(tmpDir);
    await rename(tmpDir, storeDir(layout, id));
    await fsyncPath(layout.rootDir);

    const stored = await readStored(layout, id);
    const totalMs = performance.now() - startedAt;
    log.info(
      {
        snapshotId: id,
        envName: meta.envName,
        rawSizeBytes: stored.rawSizeBytes,
        compressedSizeBytes: stored.compressedSizeBytes,
        compressMs: Math.round(compressMs),
        totalMs: Math.round(totalMs),
      },
      'snapshot stored',
    );
    return {
      ...stored,
      verifyMs: Math.round(verifyMs),
      compressMs: Math.round(compressMs),
      totalMs: Math.round(totalMs),
    };
  } catch (err) {
    await rm(tmpDir, { recursive: true, force: true }).catch(() => undefined);
    throw hostFault(err, `storing snapshot ${id} from ${engineDir}`);
  }
}
