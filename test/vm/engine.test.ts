import { existsSync, readdirSync } from 'node:fs';
import { mkdir, mkdtemp, rm, truncate, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, afterEach, beforeAll, describe, expect, it, onTestFailed } from 'vitest';
import { Vm } from '../../src/engine/vm.js';
import { snapshotVm } from '../../src/engine/snapshot.js';
import { restoreVm } from '../../src/engine/restore.js';
import { reapVms } from '../../src/engine/reaper.js';
import { isAlive } from '../../src/engine/proc.js';
import { waitForGuest, freshenRestoredGuest } from '../../src/guest/ready.js';
import { verifyEngineSnapshotDir } from '../../src/snapshot/hash-cache.js';
import { sha256File } from '../../src/util/hash.js';
import { paths } from '../../src/util/paths.js';
import type { Guest } from '../../src/guest/guest.js';
import { destroyTracked, testConfig, track, trackedIds } from './helpers.js';

const AGENT_TIMEOUT_MS = 90_000;

async function sh(guest: Guest, script: string): Promise<string> {
  const result = await guest.run(script, { timeoutMs: 30_000 });
  expect(result.exitCode, `${script}: ${result.stderr}`).toBe(0);
  return result.stdout.trim();
}

describe('one VM: boot, snapshot, restore, destroy (real QEMU)', () => {
  let work: string;
  let snapshotDir: string;

  beforeAll(async () => {
    await mkdir(paths.tmp(), { recursive: true });
    work = await mkdtemp(join(paths.tmp(), 'test-engine-'));
    snapshotDir = join(work, 'snap');

    const vm = track(await Vm.boot(await testConfig()));
    const guest = await waitForGuest(vm, AGENT_TIMEOUT_MS);
    expect(await sh(guest, 'uname -r')).toMatch(/cloud-amd64$/);
    await sh(guest, 'echo from-the-source > /root/marker');
    await guest.prepareForSnapshot();
    await guest.agent.close();
    await snapshotVm(vm, snapshotDir);
  });

  afterEach(() => onTestFailed(() => console.error('VMs of the failed test:', trackedIds())));
  afterEach(destroyTracked);
  afterAll(async () => {
    await destroyTracked();
    await rm(work, { recursive: true, force: true });
  });

  it('restores two clones at once that share the snapshot but not their writes', async () => {
    const manifest = await verifyEngineSnapshotDir(snapshotDir);
    const diskBefore = await sha256File(join(snapshotDir, 'disk.qcow2'));
    const memoryBefore = await sha256File(join(snapshotDir, 'memory.raw'));

    const [a, b] = await Promise.all([0, 1].map(async () => {
      const vm = track(await restoreVm(snapshotDir, manifest, { network: false, detached: false }));
      const guest = await waitForGuest(vm, AGENT_TIMEOUT_MS);
      await freshenRestoredGuest(guest);
      return { vm, guest };
    }));

    expect(await sh(a.guest, 'cat /root/marker')).toBe('from-the-source');
    expect(await sh(b.guest, 'cat /root/marker')).toBe('from-the-source');
    await sh(a.guest, 'echo a > /root/only-a; sync');
    await sh(b.guest, 'echo b > /root/only-b; sync');
    expect(await sh(a.guest, 'ls /root')).not.toContain('only-b');
    expect(await sh(b.guest, 'ls /root')).not.toContain('only-a');

    // Clock: a restored guest starts at the snapshot's time until prewarm sets it.
    const guestSeconds = Number(await sh(a.guest, 'date +%s.%N'));
    expect(Math.abs(guestSeconds - Date.now() / 1000)).toBeLessThan(2);

    // Entropy: clones of one snapshot must not share their CRNG.
    const read = 'cat /proc/sys/kernel/random/uuid; head -c 32 /dev/urandom | od -An -tx1 | tr -d " \\n"';
    const [outA, outB] = await Promise.all([sh(a.guest, read), sh(b.guest, read)]);
    expect(outA.split('\n')[0]).not.toBe(outB.split('\n')[0]);
    expect(outA.split('\n')[1]).not.toBe(outB.split('\n')[1]);

    await a.guest.agent.close();
    await b.guest.agent.close();
    await a.vm.destroy();
    await b.vm.destroy();
    expect(await sha256File(join(snapshotDir, 'disk.qcow2'))).toBe(diskBefore);
    expect(await sha256File(join(snapshotDir, 'memory.raw'))).toBe(memoryBefore);
  });

  it('destroy leaves no process, socket or file, and is safe to call twice', async () => {
    const manifest = await verifyEngineSnapshotDir(snapshotDir);
    const vm = track(await restoreVm(snapshotDir, manifest, { network: false, detached: false }));
    const pid = vm.qemuPid!;
    expect(isAlive(pid)).toBe(true);
    await vm.destroy();
    await vm.destroy();
    expect(isAlive(pid)).toBe(false);
    expect(existsSync(vm.dir)).toBe(false);
  });

  it('a control process killed with SIGKILL leaves nothing behind after the next start', async () => {
    const child = execa('npx', ['tsx', 'test/vm/fixtures/hold-vm.ts'], { reject: false });
    const line = await new Promise<string>((resolve, reject) => {
      child.stdout!.on('data', (chunk: Buffer) => resolve(chunk.toString()));
      child.on('exit', () => reject(new Error('hold-vm exited early')));
    });
    const held = JSON.parse(line) as { vmId: string; dir: string; qemuPid: number };
    expect(isAlive(held.qemuPid)).toBe(true);

    // Kill the node process itself (npx → node), not just npx.
    const nodePid = Number((await execa('pgrep', ['-f', '-n', 'hold-vm.ts'])).stdout.trim().split('\n').pop());
    process.kill(nodePid, 'SIGKILL');
    child.kill('SIGKILL');
    await child;

    for (let i = 0; i < 100 && isAlive(held.qemuPid); i++) await new Promise((r) => setTimeout(r, 50));
    expect(isAlive(held.qemuPid)).toBe(false);
    expect(existsSync(held.dir)).toBe(true);
    expect(await reapVms()).toContain(held.vmId);
    expect(existsSync(held.dir)).toBe(false);
  });

  it('refuses a truncated or missing snapshot file before any VM starts', async () => {
    const copy = join(work, 'damaged');
    await execa('cp', ['-r', '--sparse=always', snapshotDir, copy]);
    const vmsBefore = existsSync(paths.vms()) ? readdirSync(paths.vms()).length : 0;

    await truncate(join(copy, 'state.bin'), 100);
    await expect(verifyEngineSnapshotDir(copy)).rejects.toThrow(/state\.bin/);
    await rm(copy, { recursive: true });
    await execa('cp', ['-r', '--sparse=always', snapshotDir, copy]);
    await unlink(join(copy, 'disk.qcow2'));
    await expect(verifyEngineSnapshotDir(copy)).rejects.toThrow(/disk\.qcow2/);
    const vmsAfter = existsSync(paths.vms()) ? readdirSync(paths.vms()).length : 0;
    expect(vmsAfter).toBe(vmsBefore);
  });

  it('an agent that never answers times out and the VM is destroyed', async () => {
    const vm = track(await Vm.boot(await testConfig()));
    const pid = vm.qemuPid!;
    // No guest reaches its agent in 300 ms; the error must come, not a hang.
    await expect(waitForGuest(vm, 300)).rejects.toMatchObject({ code: 'AGENT_TIMEOUT' });
    expect(isAlive(pid)).toBe(false);
    expect(existsSync(vm.dir)).toBe(false);
  });

  it('names an unknown VM id', async () => {
    await expect(Vm.attach('vm-doesnotexist')).rejects.toThrow(/no running VM vm-doesnotexist.*prewarm vm ls/);
  });
});

describe('host setup errors', () => {
  it('says how to install QEMU when it is missing', async () => {
    const result = await execa('npx', ['tsx', 'src/cli/main.ts', 'vm', 'boot'], {
      env: { PREWARM_QEMU: '/nonexistent/qemu-system-x86_64' }, reject: false,
    });
    expect(result.exitCode).toBe(1);
    expect(result.stderr).toMatch(/QEMU .* is not installed.*scripts\/setup\.sh/);
  });
});

