import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach } from 'vitest';
import { openState, type State } from '../../src/state/db.js';

export interface TempState {
  /** The test's own temp directory, and the database file in it. */
  dir: string;
  path: string;
  state: State;
  /** The state's clock; tests move it forward. */
  clockMs: number;
}

/** A fresh state database for each test of the file, closed and removed after it.
 * `nested`: the file sits in a directory openState has to create. */
export function useTempState(opts: { nested?: boolean } = {}): TempState {
  const t = { dir: '', path: '', clockMs: 0 } as TempState;
  beforeEach(async () => {
    t.dir = await mkdtemp(join(tmpdir(), 'prewarm-state-'));
    t.path = opts.nested ? join(t.dir, 'nested', 'state.db') : join(t.dir, 'state.db');
    t.clockMs = 1_700_000_000_000;
    t.state = openState(t.path, { nowMs: () => t.clockMs });
  });
  afterEach(async () => {
    t.state.close();
    await rm(t.dir, { recursive: true, force: true });
  });
  return t;
}
