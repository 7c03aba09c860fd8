import { afterAll, afterEach, beforeAll, describe, expect, it, onTestFailed } from 'vitest';
import { Vm } from '../../src/engine/vm.js';
import type { Guest } from '../../src/guest/guest.js';
import { waitForGuest } from '../../src/guest/ready.js';
import { runLimited, type LimitedCommand } from '../../src/task/limits.js';
import { destroyTracked, testConfig, track, trackedIds } from './helpers.js';

const AGENT_TIMEOUT_MS = 120_000;
const MiB = 2 ** 20;
const TASK_ID = `limits-${process.pid}`;

let guest: Guest;
let index = 0;

async function sh(script: string): Promise<string> {
  const result = await guest.run(script, { timeoutMs: 30_000 });
  expect(result.exitCode, `${script}: ${result.stderr}`).toBe(0);
  return result.stdout.trim();
}

function run(command: string, opts: Partial<LimitedCommand> = {}) {
  return runLimited(guest, {
    taskId: TASK_ID, index: index++, command, cwd: '/root',
    memoryLimitBytes: 256 * MiB, pidsMax: 64, timeoutMs: 60_000, ...opts,
  });
}

/** The per-command cgroups left under /sys/fs/cgroup/prewarm; there should be none. */
async function leftoverCgroups(): Promise<string> {
  return sh('cd /sys/fs/cgroup/prewarm && for d in *; do [ -d "$d" ] && echo "$d"; done; :');
}

describe('a task command under its limits (real QEMU)', () => {
  beforeAll(async () => {
    const vm = track(await Vm.boot(await testConfig({ memoryMiB: 1024 })));
    guest = await waitForGuest(vm, AGENT_TIMEOUT_MS);
  });

  afterEach(() => onTestFailed(() => console.error('VMs of the failed test:', trackedIds())));
  afterAll(async () => {
    await guest?.agent.close();
    await destroyTracked();
  });

  it('ends a command that allocates past its limit as oom_killed, at its peak, without swap', async () => {
    expect(await sh('tail -n +2 /proc/swaps')).toBe('');
    // 1.5 times the limit, in filled 16 MiB buffers (zero-filled ones might not be touched).
    const script = 'const a = []; for (let i = 0; i < 24; i++) { a.push(Buffer.alloc(16 << 20, 1)); ' +
      'console.log(`${(i + 1) * 16} MiB`); }';
    await guest.agent.writeFile('/root/alloc.js', Buffer.from(script));

    let firstOutputMs: number | undefined;
    // Node alone can take tens of seconds to start in a TCG guest on a busy host.
    const result = await run('node alloc.js', {
      timeoutMs: 150_000,
      onOutput: () => { firstOutputMs ??= performance.now(); },
    });
    const endMs = performance.now();

    expect(result.status, JSON.stringify({ ...result, outputTail: undefined })).toBe('oom_killed');
    expect(result.message).toBe(
      '"node alloc.js" was killed by the OOM killer: it reached its 256 MiB limit (peak 256 MiB)');
    expect(result.exitCode).toBe(137);
    expect(result.signal).toBe(9);
    expect(result.oomKills).toBeGreaterThan(0);
    expect(result.peakMemoryBytes).toBeGreaterThan(250 * MiB);
    expect(result.peakMemoryBytes).toBeLessThanOrEqual(256 * MiB);
    expect(result.outputTail).toContain('16 MiB');
    expect(result.outputTail).not.toContain('384 MiB');
    // Node itself takes seconds to start under TCG; from its first allocation to the kill
    // should take seconds too, not a long fight with reclaim.
    expect(firstOutputMs).toBeDefined();
    expect(endMs - firstOutputMs!).toBeLessThan(30_000);
    expect(await sh('tail -n +2 /proc/swaps')).toBe('');
    expect(await leftoverCgroups()).toBe('');
  });

  it('stops a fork bomb at pids.max; the command is pids_limited and the guest answers', async () => {
    // A bomb can die out by itself (each of its processes exits once its forks fail): the
    // sleep started first is a leftover for sure.
    const result = await run('sleep 60 & bomb() { bomb | bomb & }; bomb; sleep 3', { pidsMax: 64 });

    expect(result.status).toBe('pids_limited');
    expect(result.pidsLimitHits).toBeGreaterThan(0);
    expect(result.message).toMatch(/^"sleep 60 & bomb\(\) .*" reached its limit of 64 processes: \d+ forks? (was|were) refused/);
    expect(result.killedLeftovers).toBe(true);
    expect(result.outputTail).toContain('Cannot fork');

    await guest.agent.ping({ timeoutMs: 10_000 });
    expect(await sh('echo alive')).toBe('alive');
    expect(await leftoverCgroups()).toBe('');
  });

  it('kills a command at its timeout, with everything it started, even outside its group', async () => {
    const cgroup = `${TASK_ID}-${index}`;
    // setsid puts one sleep out of the command's process group: only the cgroup catches it.
    const result = await run('setsid sleep 101 & sleep 100', { timeoutMs: 2_000 });

    expect(result.status).toBe('timed_out');
    expect(result.message).toBe(
      '"setsid sleep 101 & sleep 100" timed out after 2 s; it and everything it started were killed');
    expect(result.exitCode).toBeNull();
    expect(result.durationMs).toBeGreaterThanOrEqual(2_000);
    expect(result.durationMs).toBeLessThan(10_000);
    expect(result.killedLeftovers).toBe(true);
    expect(await sh('ps -eo args= | grep -c "^sleep 10[01]" || :')).toBe('0');
    expect(await sh(`test -e /sys/fs/cgroup/prewarm/${cgroup} && echo present || echo gone`)).toBe('gone');
  });

  it('fails a command that fills its disk, with the error in its output', async () => {
    await sh('mkdir -p /mnt/small && mount -t tmpfs -o size=8m tmpfs /mnt/small');
    try {
      const result = await run('dd if=/dev/zero of=/mnt/small/fill bs=1M count=64');
      expect(result.status).toBe('failed');
      expect(result.exitCode).toBe(1);
      expect(result.message).toBe('"dd if=/dev/zero of=/mnt/small/fill bs=1M count=64" exited with 1');
      expect(result.outputTail).toMatch(/No space left on device/);
    } finally {
      await sh('umount /mnt/small');
    }
  });

  it('delivers output while the command runs, and all of it by the end', async () => {
    const chunks: { text: string; atMs: number }[] = [];
    const result = await run('echo first; sleep 2; echo second >&2; printf tail', {
      onOutput: (chunk) => chunks.push({ text: chunk.toString(), atMs: performance.now() }),
    });
    const endMs = performance.now();

    expect(result.status).toBe('succeeded');
    expect(chunks.map((c) => c.text).join('')).toBe('first\nsecond\ntail');
    expect(result.outputTail).toBe('first\nsecond\ntail');
    expect(result.outputBytes).toBe('first\nsecond\ntail'.length);
    expect(chunks.length).toBeGreaterThan(1);
    expect(chunks[0].text).toBe('first\n');
    expect(endMs - chunks[0].atMs).toBeGreaterThan(1_000);
    expect(await sh(`cat ${result.logPath}`)).toBe('first\nsecond\ntail');
  });

  it('sets the task variables over the guest environment without writing them to disk', async () => {
    const secret = `s3cr3t-${process.pid}-'"$ \\`;
    const result = await run('test "$SECRET" = "$EXPECTED" && test "$PATH" = /usr/bin:/bin && ' +
      'test -z "${PREWARM_ENV_NAMES-}" && test -n "$SSL_CERT_FILE" && pwd', {
      env: { SECRET: secret, EXPECTED: secret, PATH: '/usr/bin:/bin' },
      cwd: '/tmp',
    });
    expect(result.status, result.outputTail).toBe('succeeded');
    expect(result.outputTail).toBe('/tmp\n');
    expect(await sh(`grep -rlsF "s3cr3t-${process.pid}" /etc /var /tmp /run /root || :`)).toBe('');
  });

  it('reports the exit code and the signal of a failed command', async () => {
    const exited = await run('echo oops >&2; exit 3');
    expect(exited).toMatchObject({ status: 'failed', exitCode: 3, signal: null });
    expect(exited.message).toBe('"echo oops >&2; exit 3" exited with 3');

    const killed = await run('kill -TERM $$');
    expect(killed).toMatchObject({ status: 'failed', exitCode: 143, signal: 15 });
    expect(killed.message).toBe('"kill -TERM $$" was killed by signal 15 (exit status 143)');
    expect(await leftoverCgroups()).toBe('');
  });
});
