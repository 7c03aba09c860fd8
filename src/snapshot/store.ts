import { mkdir, readdir, stat } from 'node:fs/promises';
import { InputError, NotFoundError } from '../util/errors.js';
import { logger, type Logger } from '../util/log.js';
import { paths } from '../util/paths.js';
import { reapTmp, removeTree } from './atomic-fs.js';
import {
  assertSnapshotId,
  cacheDirOf,
  readStored,
  storeDir,
  type StoreLayout,
  type StoredSnapshot,
} from './layout.js';
import { materializeSnapshot } from './materialize.js';
import { SNAPSHOT_ID_PATTERN } from './manifest.js';
import { putSnapshot, type PutMeta, type PutResult } from './put.js';

export type { StoredSnapshot } from './layout.js';
export type { PutMeta, PutResult } from './put.js';

export interface GcResult {
  /** Snapshots removed: older than the newest `keepPerEnv` valid ones of their env, or invalid. */
  removedIds: string[];
  /** Cache directories whose snapshot no longer exists. */
  orphanedCacheIds: string[];
}

/**
 * The local snapshot store: compressed snapshots under ROOT, decompressed copies for restores
 * under CACHE (see layout.ts). Safe for several processes: every change is a rename, and
 * unfinished work carries its owner's pid so the reaper spares live writers.
 *
 * Removing a snapshot does not disturb VMs already restored from it: they hold the local
 * files open, and unlinking keeps their data until they exit.
 */
export class SnapshotStore implements StoreLayout {
  private readonly log: Logger = logger({ part: 'snapshot' });

  constructor(
    readonly rootDir: string = paths.snapshots(),
    readonly cacheDir: string = paths.snapshotCache(),
  ) {}

  /** Create the directories and reap what interrupted puts and materializes left behind. */
  static async open(rootDir?: string, cacheDir?: string): Promise<SnapshotStore> {
    const store = new SnapshotStore(rootDir, cacheDir);
    await mkdir(store.rootDir, { recursive: true });
    await mkdir(store.cacheDir, { recursive: true });
    await store.reapIncomplete();
    return store;
  }

  put(engineSnapshotDir: string, meta: PutMeta): Promise<PutResult> {
    return putSnapshot(this, engineSnapshotDir, meta, this.log.child({ op: 'put' }));
  }

  /** Stored snapshots, newest first. Directories whose manifest is unreadable are skipped. */
  async list(filter: { envName?: string } = {}): Promise<StoredSnapshot[]> {
    const snapshots: StoredSnapshot[] = [];
    for (const id of await this.idsIn(this.rootDir)) {
      try {
        snapshots.push(await readStored(this, id));
      } catch (err) {
        this.log.warn({ snapshotId: id, err: (err as Error).message }, 'skipping snapshot');
      }
    }
    return snapshots
      .filter((s) => filter.envName === undefined || s.envName === filter.envName)
      .sort((a, b) => b.createdAt.localeCompare(a.createdAt) || b.id.localeCompare(a.id));
  }

  async get(id: string): Promise<StoredSnapshot> {
    assertSnapshotId(id);
    const exists = await stat(storeDir(this, id)).then(
      (st) => st.isDirectory(),
      () => false,
    );
    if (!exists) {
      throw new NotFoundError(
        `snapshot ${id} is not in ${this.rootDir}; list snapshots with \`prewarm snapshot ls\``,
      );
    }
    return readStored(this, id);
  }

  /** Remove a snapshot and its local copy. Idempotent: returns false if nothing was there. */
  async remove(id: string): Promise<boolean> {
    assertSnapshotId(id);
    const removedStore = await removeTree(storeDir(this, id));
    const removedCache = await removeTree(cacheDirOf(this, id));
    if (removedStore || removedCache) this.log.info({ snapshotId: id }, 'snapshot removed');
    return removedStore || removedCache;
  }

  /**
   * Keep the newest `keepPerEnv` valid snapshots of each environment; remove the others, every
   * invalid one, local copies without a snapshot, and abandoned temporary files.
   */
  async gc(opts: { keepPerEnv: number }): Promise<GcResult> {
    if (!Number.isInteger(opts.keepPerEnv) || opts.keepPerEnv < 0) {
      throw new InputError(`keepPerEnv must be a whole number >= 0, got ${opts.keepPerEnv}`);
    }

    const keptPerEnv = new Map<string, number>();
    const removedIds: string[] = [];
    for (const snap of await this.list()) {
      const kept = keptPerEnv.get(snap.envName) ?? 0;
      if (snap.valid && kept < opts.keepPerEnv) {
        keptPerEnv.set(snap.envName, kept + 1);
        continue;
      }
      await this.remove(snap.id);
      removedIds.push(snap.id);
    }

    const stored = new Set(await this.idsIn(this.rootDir));
    const orphanedCacheIds: string[] = [];
    for (const id of await this.idsIn(this.cacheDir)) {
      if (stored.has(id)) continue;
      await removeTree(cacheDirOf(this, id));
      orphanedCacheIds.push(id);
    }

    await this.reapIncomplete();
    this.log.info({ removedIds, orphanedCacheIds }, 'snapshot gc done');
    return { removedIds, orphanedCacheIds };
  }

  /**
   * Delete what interrupted work left: `.tmp-*` entries in ROOT, CACHE and each snapshot's
   * directories, unless the process that owns them is still running. Returns their paths.
   */
  async reapIncomplete(): Promise<string[]> {
    const reaped = [...(await reapTmp(this.rootDir)), ...(await reapTmp(this.cacheDir))];
    for (const id of await this.idsIn(this.rootDir)) {
      reaped.push(...(await reapTmp(storeDir(this, id))));
    }
    for (const id of await this.idsIn(this.cacheDir)) {
      reaped.push(...(await reapTmp(cacheDirOf(this, id))));
    }
    if (reaped.length > 0) this.log.info({ reaped }, 'reaped unfinished snapshot files');
    return reaped;
  }

  /** A local engine snapshot directory for `id`, ready for a restore to map. */
  async materialize(id: string): Promise<string> {
    const snap = await this.get(id);
    return materializeSnapshot(this, snap, this.log.child({ op: 'materialize', snapshotId: id }));
  }

  private async idsIn(dir: string): Promise<string[]> {
    try {
      const entries = await readdir(dir, { withFileTypes: true });
      return entries
        .filter((e) => e.isDirectory() && SNAPSHOT_ID_PATTERN.test(e.name))
        .map((e) => e.name);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw err;
    }
  }
}
