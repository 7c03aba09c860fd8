import { readFile } from 'node:fs/promises';
import { z } from 'zod';
import type { EngineSnapshotManifest } from '../engine/snapshot-format.js';
import { SnapshotError } from '../util/errors.js';

/**
 * The JSON files of the snapshot store, validated with zod where they are read:
 *
 *   snapshot.json   the engine's manifest (src/engine/snapshot-format.ts)
 *   manifest.json   the store's manifest: who the snapshot is for, what it was made from, and
 *                   each file's raw and compressed size and sha256
 *   invalid.json    written when a content check failed; the snapshot is never restored again
 */
export const STORE_MANIFEST = 'manifest.json';
export const INVALID_MARKER = 'invalid.json';

export const fileDigestSchema = z.object({
  sizeBytes: z.number().int().nonnegative(),
  sha256: z.string().regex(/^[0-9a-f]{64}$/, 'expected 64 lowercase hex digits'),
});

// Loose objects: fields added by a newer engine survive the copy into the store and back.
export const engineManifestSchema = z.looseObject({
  formatVersion: z.literal(1),
  engine: z.looseObject({ name: z.literal('qemu'), version: z.string() }),
  createdAt: z.string(),
  sourceVmId: z.string(),
  accel: z.enum(['kvm', 'tcg']),
  shape: z.looseObject({
    memoryMiB: z.number().int().positive(),
    vcpus: z.number().int().positive(),
    diskSizeBytes: z.number().int().nonnegative(),
  }),
  baseImage: z.looseObject({ digest: z.string(), diskPath: z.string().min(1) }),
  files: z.object({
    'memory.raw': fileDigestSchema,
    'state.bin': fileDigestSchema,
    'disk.qcow2': fileDigestSchema,
  }),
}) satisfies z.ZodType<EngineSnapshotManifest>;
/** An engine manifest as read: EngineSnapshotManifest plus any fields a newer engine added. */
export type EngineManifest = z.infer<typeof engineManifestSchema>;

function storeFileSchema<N extends string>(compressedName: N) {
  return z.object({
    raw: fileDigestSchema,
    compressed: fileDigestSchema.extend({ name: z.literal(compressedName) }),
  });
}

export const SNAPSHOT_ID_PATTERN = /^snap-[0-9a-f]{12}$/;

export const storeManifestSchema = z.object({
  formatVersion: z.literal(1),
  id: z.string().regex(SNAPSHOT_ID_PATTERN),
  envName: z.string().min(1),
  cacheKey: z.string().min(1),
  inputs: z.record(z.string(), z.unknown()),
  agentsMd: z.string().nullable(),
  createdAt: z.string(),
  engine: engineManifestSchema,
  files: z.object({
    'memory.raw': storeFileSchema('memory.raw.zst'),
    'state.bin': storeFileSchema('state.bin.zst'),
    'disk.qcow2': storeFileSchema('disk.qcow2.zst'),
  }),
});
export type StoreManifest = z.infer<typeof storeManifestSchema>;

export const invalidMarkerSchema = z.object({
  code: z.string(),
  reason: z.string(),
  markedAt: z.string(),
});
export type InvalidMarker = z.infer<typeof invalidMarkerSchema>;

/**
 * Read and validate a JSON file. A missing file is SNAPSHOT_MISSING_FILE, bad JSON or a bad
 * field SNAPSHOT_BAD_MANIFEST; both name the file and end with `fix`. Other read errors
 * (EACCES, EIO) are the host's and pass through unchanged.
 */
export async function readJsonFile<T>(path: string, schema: z.ZodType<T>, fix: string): Promise<T> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    throw new SnapshotError(`${path} is missing. ${fix}`, { code: 'SNAPSHOT_MISSING_FILE' });
  }

  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    const detail = err instanceof Error ? err.message : String(err);
    throw new SnapshotError(`${path} is not valid JSON (${detail}). ${fix}`, {
      code: 'SNAPSHOT_BAD_MANIFEST',
    });
  }

  const parsed = schema.safeParse(value);
  if (!parsed.success) {
    const fields = parsed.error.issues
      .map((issue) => `${issue.path.join('.') || '(root)'}: ${issue.message}`)
      .join('; ');
    throw new SnapshotError(`${path} is not a valid manifest (${fields}). ${fix}`, {
      code: 'SNAPSHOT_BAD_MANIFEST',
    });
  }
  return parsed.data;
}
