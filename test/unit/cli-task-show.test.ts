import { describe, expect, it } from 'vitest';
import { openState } from '../../src/state/db.js';
import { prewarmCli } from '../vm/cli.js';
import { useTempHome } from './temp-home.js';

describe('prewarm task show --diff (local state)', () => {
  useTempHome('prewarm-cli-show-');

  it('prints the stored patch; says why when there is none or it was too large', async () => {
    const state = openState();
    const queued = await state.tasks.create({ envName: 'e', request: { commands: ['true'] } });
    const big = await state.tasks.create({ envName: 'e', request: { commands: ['true'] } });
    const small = await state.tasks.create({ envName: 'e', request: { commands: ['true'] } });
    await state.taskLogs.putDiff(big.id, { patch: Buffer.alloc(0), stats: { sizeBytes: 99_000_000 }, tooLarge: true });
    const patch = 'diff --git a/x b/x\n';
    await state.taskLogs.putDiff(small.id, { patch: Buffer.from(patch), stats: { sizeBytes: patch.length }, tooLarge: false });
    state.close();
    const env = { PREWARM_HOME: process.env.PREWARM_HOME };

    const none = await prewarmCli(['task', 'show', queued.id, '--diff'], { env });
    expect(none.exitCode).not.toBe(0);
    expect(none.stdout).toBe('');
    expect(none.stderr).toContain(`task ${queued.id} has no diff (status queued)`);

    const tooLarge = await prewarmCli(['task', 'show', big.id, '--diff'], { env });
    expect(tooLarge.exitCode).not.toBe(0);
    expect(tooLarge.stderr).toContain(`the diff of task ${big.id} is too large (99000000 bytes) and was not kept`);

    const ok = await prewarmCli(['task', 'show', small.id, '--diff'], { env, stripFinalNewline: false });
    expect(ok.exitCode, ok.stderr).toBe(0);
    expect(ok.stdout).toBe(patch);
  }, 60_000);
});
