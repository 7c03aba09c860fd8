import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Accelerator, VmConfig } from './types.js';

/** Files of one VM, all inside its state directory. */
export function vmFiles(vmDir: string) {
  return {
    record: join(vmDir, 'vm.json'),
    qmpSocket: join(vmDir, 'qmp.sock'),
    agentSocket: join(vmDir, 'agent.sock'),
    serialLog: join(vmDir, 'serial.log'),
    qemuLog: join(vmDir, 'qemu.log'),
    overlay: join(vmDir, 'overlay.qcow2'),
    memory: join(vmDir, 'memory.raw'),
  };
}

/** Kernel arguments. Under TCG, microvm has no timer the kernel can calibrate the TSC
 * against (no HPET, no PIT gate), so the rate is given and trusted. TCG's guest TSC is the
 * host's, so the host's rate keeps the guest clock from drifting. Under KVM the kvm-clock
 * makes this unnecessary. */
export function kernelCmdline(accel: Accelerator): string {
  // init_on_free: freed guest pages are zeroed, so what a finished process held (a setup
  // script's secrets) is not in a snapshot of the guest's memory.
  const base = 'console=ttyS0 reboot=t panic=-1 quiet pci=off 8250.nr_uarts=1 random.trust_cpu=on ' +
    'init_on_free=1';
  return accel === 'tcg' ? `${base} tsc_early_khz=${hostTscKhz()} tsc=reliable` : base;
}

/** The host's TSC rate; x86 Linux reports the constant TSC rate as "cpu MHz". */
export function hostTscKhz(): number {
  const text = readFileSync('/proc/cpuinfo', 'utf8');
  const mhz = Number(/^cpu MHz\s*:\s*([\d.]+)/m.exec(text)?.[1]);
  return Number.isFinite(mhz) && mhz > 0 ? Math.round(mhz * 1000) : 2_000_000;
}

export interface QemuLaunch {
  accel: Accelerator;
  /** The guest's RAM. share=true while the VM can be snapshotted (writes reach the file);
   * false for restores, which map the snapshot's file privately (copy-on-write). */
  memoryPath: string;
  memoryShared: boolean;
  /** The VM's own overlay on the base disk or on a snapshot's disk. */
  diskPath: string;
  /** Restores start paused, waiting for the device state. */
  incoming: boolean;
}

export function qemuArgs(config: VmConfig, vmDir: string, launch: QemuLaunch): string[] {
  const f = vmFiles(vmDir);
  const net = config.network ? 'user,id=n0' : 'user,id=n0,restrict=on';
  const args = [
    '-M', 'microvm,memory-backend=mem',
    // TCG's translation cache is 1 GiB by default; 128 MiB holds a guest's hot code and keeps
    // an idle VM's host memory close to what its guest uses.
    '-accel', launch.accel === 'tcg' ? 'tcg,tb-size=128' : 'kvm',
    '-object', `memory-backend-file,id=mem,size=${config.memoryMiB}M,mem-path=${launch.memoryPath},` +
      `share=${launch.memoryShared ? 'on' : 'off'},prealloc=off`,
    '-m', `${config.memoryMiB}M`,
    '-smp', String(config.vcpus),
    '-nodefaults', '-no-user-config', '-display', 'none', '-no-reboot',
    '-kernel', config.kernelPath,
    '-initrd', config.initrdPath,
    '-append', kernelCmdline(launch.accel),
    '-serial', `file:${f.serialLog}`,
    '-qmp', `unix:${f.qmpSocket},server=on,wait=off`,
    '-device', 'virtio-serial-device',
    '-chardev', `socket,path=${f.agentSocket},server=on,wait=off,id=ga0`,
    '-device', 'virtserialport,chardev=ga0,name=org.qemu.guest_agent.0',
    '-device', 'virtio-balloon-device,free-page-reporting=on',
    '-drive', `file=${launch.diskPath},if=none,id=d0,format=qcow2,discard=unmap`,
    '-device', 'virtio-blk-device,drive=d0',
    '-netdev', net,
    '-device', 'virtio-net-device,netdev=n0',
  ];
  if (launch.accel === 'kvm') args.push('-cpu', 'host');
  if (launch.incoming) args.push('-incoming', 'defer');
  return args;
}
