import { mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { execa } from 'execa';
import { QEMU_BINARY } from '../engine/qemu-binary.js';
import { qemuArgs, vmFiles } from '../engine/qemu-args.js';
import { createOverlay } from '../engine/vm.js';
import { QmpClient } from '../engine/qmp.js';
import type { Accelerator, VmConfig } from '../engine/types.js';
import { AgentClient } from '../guest/agent.js';
import { paths } from '../util/paths.js';

/**
 * The baseline a user might reach for instead of prewarm: QEMU's own `savevm` into the
 * qcow2 image (RAM copied into the image) and `-loadvm` at start (RAM copied back out).
 * Same guest, same devices; only the snapshot mechanism differs.
 */
export async function measureLoadvm(config: VmConfig, accel: Accelerator, rounds: number): Promise<number[]> {
  const dir = join(paths.tmp(), `bench-loadvm-${process.pid}-${randomBytes(3).toString('hex')}`);
  await mkdir(dir, { recursive: true });
  const f = vmFiles(dir);
  const start = async (extra: string[]) => {
    const args = qemuArgs({ ...config, network: false }, dir, {
      accel, memoryPath: join(dir, `ram-${randomBytes(3).toString('hex')}`), memoryShared: false,
      diskPath: f.overlay, incoming: false,
    });
    const child = execa('setpriv', ['--pdeathsig', 'SIGKILL', QEMU_BINARY, ...args, ...extra], { reject: false });
    const qmp = await QmpClient.connect(f.qmpSocket, { vmId: 'loadvm-baseline', timeoutMs: 10_000 });
    return { child, qmp };
  };
  const stop = async (vm: { child: ReturnType<typeof execa>; qmp: QmpClient }) => {
    await vm.qmp.execute('quit').catch(() => {});
    await vm.qmp.close();
    vm.child.kill('SIGKILL');
    await vm.child;
    await execa('sh', ['-c', `rm -f ${dir}/ram-*`]);
  };
  try {
    await createOverlay(config.baseDiskPath, f.overlay, config.diskSizeBytes);
    const booted = await start([]);
    const agent = await AgentClient.connect(f.agentSocket, { vmId: 'loadvm-baseline', timeoutMs: 180_000 });
    await agent.sh('sync', { timeoutMs: 30_000 });
    await agent.close();
    await booted.qmp.execute('human-monitor-command', { 'command-line': 'savevm bench' }, { timeoutMs: 300_000 });
    await stop(booted);

    const samples: number[] = [];
    for (let i = 0; i < rounds; i++) {
      const startedAt = performance.now();
      const vm = await start(['-loadvm', 'bench']);
      const ready = await AgentClient.connect(f.agentSocket, { vmId: 'loadvm-baseline', timeoutMs: 60_000 });
      await ready.exec({ path: '/bin/true', timeoutMs: 30_000 });
      samples.push(performance.now() - startedAt);
      await ready.close();
      await stop(vm);
    }
    return samples;
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
