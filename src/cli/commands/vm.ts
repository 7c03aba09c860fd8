import type { Command } from 'commander';
import { buildImage } from '../../image/build.js';
import { vmConfig } from '../../engine/config.js';
import { Vm } from '../../engine/vm.js';
import { snapshotVm } from '../../engine/snapshot.js';
import { restoreVm } from '../../engine/restore.js';
import { killVm, listVms, readRecord } from '../../engine/reaper.js';
import { residentMemory } from '../../engine/proc.js';
import { AgentClient } from '../../guest/agent.js';
import { Guest } from '../../guest/guest.js';
import { freshenRestoredGuest, waitForGuest } from '../../guest/ready.js';
import { verifyEngineSnapshotDir } from '../../snapshot/hash-cache.js';
import { paths } from '../../util/paths.js';
import { NotFoundError } from '../../util/errors.js';
import { join, resolve } from 'node:path';
import { mib, report, table } from '../output.js';
import { globals } from '../globals.js';

const BOOT_TIMEOUT_MS = 120_000;
const RESTORE_TIMEOUT_MS = 30_000;

async function vmRecordOrThrow(vmId: string) {
  const record = await readRecord(join(paths.vms(), vmId));
  if (!record) throw new NotFoundError(`no VM ${vmId}; \`prewarm vm ls\` lists the VMs`);
  return record;
}

async function guestOf(vmId: string): Promise<Guest> {
  await vmRecordOrThrow(vmId);
  const files = join(paths.vms(), vmId);
  return new Guest(await AgentClient.connect(join(files, 'agent.sock'), { vmId, timeoutMs: 10_000 }));
}

export function registerVm(program: Command): void {
  const vm = program.command('vm').description('single microVMs: boot, exec, snapshot, restore');

  vm.command('boot')
    .description('boot a VM from the guest image and wait for its agent')
    .option('--memory <MiB>', 'guest memory in MiB', '1024')
    .option('--vcpus <n>', 'virtual CPUs', '2')
    .option('--no-network', 'keep the NIC but let it reach nothing')
    .action(async (opts: { memory: string; vcpus: string; network: boolean }) => {
      const g = globals(program);
      const image = await buildImage({ quiet: true });
      const startedAt = performance.now();
      const config = vmConfig(image, { memoryMiB: Number(opts.memory), vcpus: Number(opts.vcpus), diskGiB: 8 },
        { network: opts.network, detached: true });
      const booted = await Vm.boot(config);
      const guest = await waitForGuest(booted, BOOT_TIMEOUT_MS);
      await guest.agent.close();
      await booted.release();
      const ms = Math.round(performance.now() - startedAt);
      report(g.json, { vmId: booted.id, accel: booted.accel, bootMs: ms }, () =>
        `${booted.id} booted in ${ms} ms (${booted.accel})`);
    });

  vm.command('exec')
    .description('run a command in a VM and print its output')
    .argument('<id>', 'VM id')
    .argument('<cmd...>', 'command and arguments (after --)')
    .option('--timeout <seconds>', 'give up after this long', '600')
    .action(async (vmId: string, cmd: string[], opts: { timeout: string }) => {
      const g = globals(program);
      const guest = await guestOf(vmId);
      const result = await guest.agent.exec({
        path: '/usr/local/bin/prewarm-run', args: cmd, timeoutMs: Number(opts.timeout) * 1000,
      });
      await guest.agent.close();
      const out = { exitCode: result.exitCode, signal: result.signal, timedOut: result.timedOut,
        stdout: result.stdout.toString(), stderr: result.stderr.toString() };
      if (g.json) report(true, out, () => '');
      else {
        process.stdout.write(result.stdout);
        process.stderr.write(result.stderr);
      }
      process.exitCode = result.exitCode ?? 1;
    });

  vm.command('snapshot')
    .description('flush and freeze a booted VM into DIR (the VM ends)')
    .argument('<id>', 'VM id')
    .argument('<dir>', 'directory to write the snapshot to')
    .action(async (vmId: string, dir: string) => {
      const g = globals(program);
      await vmRecordOrThrow(vmId);
      const guest = await guestOf(vmId);
      await guest.prepareForSnapshot();
      await guest.agent.close();
      const handle = await Vm.attach(vmId);
      const manifest = await snapshotVm(handle, resolve(dir));
      const sizeBytes = Object.values(manifest.files).reduce((n, f) => n + f.sizeBytes, 0);
      report(g.json, { dir: resolve(dir), ...manifest }, () =>
        `snapshot of ${vmId} in ${resolve(dir)}: device state ${manifest.files['state.bin'].sizeBytes} B ` +
        `in ${Math.round(manifest.timings.saveMs)} ms, ${mib(sizeBytes)} apparent`);
    });

  vm.command('restore')
    .description('start a new VM from a snapshot directory')
    .argument('<dir>', 'snapshot directory')
    .option('--no-network', 'keep the NIC but let it reach nothing')
    .action(async (dir: string, opts: { network: boolean }) => {
      const g = globals(program);
      const manifest = await verifyEngineSnapshotDir(resolve(dir));
      const startedAt = performance.now();
      const restored = await restoreVm(resolve(dir), manifest, { network: opts.network, detached: true });
      const guest = await waitForGuest(restored, RESTORE_TIMEOUT_MS);
      await freshenRestoredGuest(guest);
      await guest.agent.close();
      await restored.release();
      const ms = Math.round(performance.now() - startedAt);
      report(g.json, { vmId: restored.id, restoreMs: ms }, () => `${restored.id} restored in ${ms} ms`);
    });

  vm.command('ls')
    .description('list VMs with their host memory')
    .action(async () => {
      const g = globals(program);
      const vms = (await listVms()).map((v) => ({
        vmId: v.vmId, alive: v.alive, accel: v.accel, memoryMiB: v.config.memoryMiB,
        hostRssBytes: v.alive ? residentMemory(v.qemuPid)?.rssBytes ?? null : null,
        restoredFrom: v.restoredFrom, detached: v.owner === null, labels: v.config.labels ?? {},
        createdAt: v.createdAt,
      }));
      report(g.json, vms, () => table(vms.map((v) => ({ ...v, hostRss: mib(v.hostRssBytes), tier: `${v.memoryMiB} MiB`,
        from: v.restoredFrom ?? 'boot', state: v.alive ? 'running' : 'dead' })),
      ['vmId', 'state', 'accel', 'tier', 'hostRss', 'from', 'createdAt']));
    });

  vm.command('rm')
    .description('destroy a VM: stop QEMU, remove its sockets, overlay and state')
    .argument('<id...>', 'VM ids')
    .action(async (ids: string[]) => {
      const g = globals(program);
      for (const vmId of ids) await killVm(await vmRecordOrThrow(vmId), join(paths.vms(), vmId));
      report(g.json, { removed: ids }, () => `removed ${ids.join(', ')}`);
    });
}
