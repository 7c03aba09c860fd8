import { randomBytes } from 'node:crypto';
import { beforeEach, describe, expect, it } from 'vitest';
import { openState } from '../../src/state/db.js';
import { NotFoundError } from '../../src/util/errors.js';
import { useTempState } from './temp-state.js';

let taskId: string;

const t = useTempState();

beforeEach(async () => {
  taskId = (await t.state.tasks.create({ envName: 'web', request: { commands: ['npm test'] } })).id;
});

describe('task logs', () => {
  it('numbers chunks per task in append order and reads after a seq', async () => {
    const other = (await t.state.tasks.create({ envName: 'web', request: {} })).id;
    expect(await t.state.taskLogs.append(taskId, 'event', 'restoring snapshot')).toBe(1);
    expect(await t.state.taskLogs.append(other, 'output', 'other task')).toBe(1);
    expect(await t.state.taskLogs.append(taskId, 'output', Buffer.from('line 1\n'))).toBe(2);
    expect(await t.state.taskLogs.append(taskId, 'output', new Uint8Array([0xff, 0x00, 0x0a]))).toBe(3);

    const all = await t.state.taskLogs.read(taskId);
    expect(all.map((c) => [c.seq, c.stream])).toEqual([[1, 'event'], [2, 'output'], [3, 'output']]);
    expect(all[0].data.toString()).toBe('restoring snapshot');
    expect(all[2].data).toEqual(Buffer.from([0xff, 0x00, 0x0a]));
    expect(all[0].at).toBeInstanceOf(Date);

    expect((await t.state.taskLogs.read(taskId, 2)).map((c) => c.seq)).toEqual([3]);
    expect(await t.state.taskLogs.read(taskId, 3)).toEqual([]);
    expect((await t.state.taskLogs.read(taskId, 0, 2)).map((c) => c.seq)).toEqual([1, 2]);
    await expect(t.state.taskLogs.append('task-000000000000', 'output', 'x')).rejects.toThrow(NotFoundError);
  });

  it('lets a poller on another connection tail a live task without gaps', async () => {
    const reader = openState(t.path);
    try {
      const received: string[] = [];
      let lastSeq = 0;
      for (let i = 0; i < 50; i++) {
        await t.state.taskLogs.append(taskId, 'output', `line ${i}\n`);
        if (i % 7 === 0) {
          for (const chunk of await reader.taskLogs.read(taskId, lastSeq)) {
            received.push(chunk.data.toString());
            lastSeq = chunk.seq;
          }
        }
      }
      for (const chunk of await reader.taskLogs.read(taskId, lastSeq)) received.push(chunk.data.toString());
      expect(received).toEqual(Array.from({ length: 50 }, (_, i) => `line ${i}\n`));
    } finally {
      reader.close();
    }
  });
});

describe('task diffs', () => {
  it('stores binary patches byte-exact, and replaces them', async () => {
    const patch = Buffer.concat([
      Buffer.from('diff --git a/logo.png b/logo.png\nGIT binary patch\n'),
      randomBytes(256 * 1024),
      Buffer.from([0x00, 0xff, 0x00]),
    ]);
    const stats = { filesChanged: 1, insertions: 0, deletions: 0, binaryFiles: ['logo.png'] };
    await t.state.taskLogs.putDiff(taskId, { patch, stats, tooLarge: false });

    const reopened = openState(t.path);
    const stored = await reopened.taskLogs.getDiff(taskId);
    reopened.close();
    expect(stored?.patch.equals(patch)).toBe(true);
    expect(stored).toMatchObject({ stats, tooLarge: false });

    await t.state.taskLogs.putDiff(taskId, { patch: Buffer.alloc(0), stats: { sizeBytes: 9e9 }, tooLarge: true });
    expect(await t.state.taskLogs.getDiff(taskId)).toEqual({
      patch: Buffer.alloc(0), stats: { sizeBytes: 9e9 }, tooLarge: true,
    });
    expect(await t.state.taskLogs.getDiff('task-000000000000')).toBeUndefined();
    await expect(
      t.state.taskLogs.putDiff('task-000000000000', { patch: '', stats: {}, tooLarge: false }),
    ).rejects.toThrow(NotFoundError);
  });
});
