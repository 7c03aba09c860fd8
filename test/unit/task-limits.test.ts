import { execa } from 'execa';
import { describe, expect, it } from 'vitest';
import type { Guest } from '../../src/guest/guest.js';
import { OutputTail, classify, formatMiB, quoteCommand, type Outcome } from '../../src/task/command-result.js';
import { parseNumstat } from '../../src/task/diff.js';
import { ENV_PREFIX, parseKeyValues, scriptEnv } from '../../src/task/limits-script.js';
import { runLimited } from '../../src/task/limits.js';

const MiB = 2 ** 20;
const base: Outcome = {
  command: 'npm test', exitCode: 0, timedOut: false, timeoutMs: 60_000, oomKills: 0,
  peakMemoryBytes: 100 * MiB, memoryLimitBytes: 512 * MiB, pidsMax: 64, pidsLimitHits: 0,
};

describe('classify', () => {
  it('names the command, the limit and the peak of an OOM kill', () => {
    expect(classify({ ...base, command: 'node alloc.js', exitCode: 137, oomKills: 1, peakMemoryBytes: 512 * MiB }))
      .toEqual({
        status: 'oom_killed',
        message: '"node alloc.js" was killed by the OOM killer: it reached its 512 MiB limit (peak 512 MiB)',
      });
  });

  it('puts an OOM kill before a timeout, a timeout before the process limit', () => {
    expect(classify({ ...base, oomKills: 2, timedOut: true, pidsLimitHits: 3 }).status).toBe('oom_killed');
    expect(classify({ ...base, timedOut: true, exitCode: null, pidsLimitHits: 3 }).status).toBe('timed_out');
    expect(classify({ ...base, pidsLimitHits: 3 })).toEqual({
      status: 'pids_limited',
      message: '"npm test" reached its limit of 64 processes: 3 forks were refused (exited with 0)',
    });
  });

  it('tells a non-zero exit from a signal', () => {
    expect(classify({ ...base, exitCode: 1 }).message).toBe('"npm test" exited with 1');
    expect(classify({ ...base, exitCode: 143 }).message)
      .toBe('"npm test" was killed by signal 15 (exit status 143)');
    expect(classify(base)).toEqual({ status: 'succeeded', message: '"npm test" succeeded' });
    expect(classify({ ...base, timedOut: true, timeoutMs: 1500 }).message)
      .toBe('"npm test" timed out after 1.5 s; it and everything it started were killed');
  });

  it('shortens long commands and formats sizes', () => {
    expect(quoteCommand(`echo ${'x'.repeat(200)}\nnext`)).toHaveLength(82);
    expect(formatMiB(3.25 * MiB)).toBe('3.3 MiB');
    expect(formatMiB(2047.6 * MiB)).toBe('2048 MiB');
  });
});

describe('OutputTail', () => {
  it('keeps the last bytes across chunks', () => {
    const tail = new OutputTail(5);
    for (const piece of ['abc', 'def', 'gh', 'ij']) tail.push(Buffer.from(piece));
    expect(tail.toString()).toBe('fghij');
  });
});

describe('the limits script helpers', () => {
  it('parses key=value lines', () => {
    const values = parseKeyValues('exit_code=137\nmemory_oom_kill=1\nnoise\npeak_memory_bytes=42\n');
    expect(Object.fromEntries(values)).toEqual({ exit_code: '137', memory_oom_kill: '1', peak_memory_bytes: '42' });
  });

  it('sets task variables with any value over existing ones, and removes its own', async () => {
    const value = `a b"c'$d\\e\`f\nline`;
    const env = Object.fromEntries(scriptEnv({ PATH: process.env.PATH!, V: 'guest' }, { V: value, n: 'x' })
      .map((entry) => [entry.slice(0, entry.indexOf('=')), entry.slice(entry.indexOf('=') + 1)]));
    const { stdout } = await execa('/bin/sh', ['-c', `${ENV_PREFIX}printf '%s|%s|%s' "$V" "$n" "\${PREWARM_ENV_V-gone}"`],
      { env, extendEnv: false });
    expect(stdout).toBe(`${value}|x|gone`);
  });

  it('counts numstat -z records, renames and binary files included', () => {
    const raw = Buffer.from('2\t1\tmodify.txt\0-\t-\tblob.bin\0' + '1\t0\t\0old name\0new\tname\0' + '0\t0\trun.sh\0');
    expect(parseNumstat(raw)).toEqual({ filesChanged: 4, insertions: 3, deletions: 1, binaryFiles: 1 });
    expect(parseNumstat(Buffer.alloc(0))).toEqual({ filesChanged: 0, insertions: 0, deletions: 0, binaryFiles: 0 });
  });
});

describe('runLimited input', () => {
  const guest = {} as Guest;
  const ok = {
    taskId: 'task-1', index: 0, command: 'true', cwd: '/', memoryLimitBytes: 256 * MiB, pidsMax: 64, timeoutMs: 1000,
  };

  it('names the bad field before touching the guest', async () => {
    await expect(runLimited(guest, { ...ok, taskId: '../x' })).rejects.toThrow(/taskId/);
    await expect(runLimited(guest, { ...ok, cwd: 'repo' })).rejects.toThrow(/cwd "repo" must be an absolute path/);
    await expect(runLimited(guest, { ...ok, env: { 'BAD-NAME': 'x' } })).rejects.toThrow(/env\.BAD-NAME/);
    await expect(runLimited(guest, { ...ok, memoryLimitBytes: 1000 })).rejects.toThrow(/memoryLimitBytes/);
    await expect(runLimited(guest, { ...ok, pidsMax: 0 })).rejects.toThrow(/pidsMax/);
  });
});
