import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll } from 'vitest';

/** Give a test file its own PREWARM_HOME in a temp dir, restored and removed afterwards.
 * Returns a getter for the temp root (set once beforeAll has run). */
export function useTempHome(prefix: string): () => string {
  let root = '';
  let savedHome: string | undefined;
  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), prefix));
    savedHome = process.env.PREWARM_HOME;
    process.env.PREWARM_HOME = join(root, 'home');
    process.env.PREWARM_LOG_LEVEL ??= 'warn';
  });
  afterAll(async () => {
    if (savedHome === undefined) delete process.env.PREWARM_HOME;
    else process.env.PREWARM_HOME = savedHome;
    await rm(root, { recursive: true, force: true });
  });
  return () => root;
}
