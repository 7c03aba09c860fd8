import { constants, existsSync } from 'node:fs';
import { access, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { release } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { paths } from '../util/paths.js';
import { logger } from '../util/log.js';
import { QEMU_BINARY, qemuVersion } from './qemu-binary.js';
import { qemuArgs, vmFiles } from './qemu-args.js';
import type { Accelerator, VmConfig } from './types.js';

/** How long a KVM guest may stay silent before the probe says "no". A stock kernel that
 * KVM here cannot run just hangs; QEMU does not exit. */
const PROBE_DEADLINE_MS = 15_000;
const READY_LINE = 'prewarm-init: guest agent on';

let chosen: Accelerator | undefined;

/**
 * KVM when a guest actually boots under it, else TCG. PREWARM_ACCEL=kvm|tcg forces a choice.
 * The probe's answer is cached per host kernel, QEMU version and guest image, and the choice
 * is logged once per process.
 */
export async function chooseAccelerator(config: VmConfig): Promise<Accelerator> {
  if (chosen) return chosen;
  const log = logger({ part: 'engine' });
  const forced = process.env.PREWARM_ACCEL;
  if (forced === 'kvm' || forced === 'tcg') {
    chosen = forced;
    log.info({ accel: chosen }, `accelerator ${chosen} (PREWARM_ACCEL)`);
    return chosen;
  }

  const key = { hostKernel: release(), qemu: await qemuVersion(), image: config.baseImageDigest };
  const cacheFile = join(paths.hostProbes(), 'accel.json');
  const cached = existsSync(cacheFile) ? JSON.parse(await readFile(cacheFile, 'utf8')) : null;
  if (cached && JSON.stringify(cached.key) === JSON.stringify(key)) {
    chosen = cached.accel as Accelerator;
    log.info({ accel: chosen, cached: true }, `accelerator ${chosen}: ${cached.reason}`);
    return chosen;
  }

  const { accel, reason } = await probeKvm(config);
  await mkdir(paths.hostProbes(), { recursive: true });
  await writeFile(cacheFile, JSON.stringify({ key, accel, reason, probedAt: new Date().toISOString() }));
  chosen = accel;
  log.info({ accel }, `accelerator ${accel}: ${reason}`);
  return accel;
}

async function probeKvm(config: VmConfig): Promise<{ accel: Accelerator; reason: string }> {
  try {
    await access('/dev/kvm', constants.R_OK | constants.W_OK);
  } catch {
    return { accel: 'tcg', reason: '/dev/kvm is missing or not accessible; using TCG emulation' };
  }

  await mkdir(paths.tmp(), { recursive: true });
  const dir = await mkdtemp(join(paths.tmp(), 'kvm-probe-'));
  try {
    const files = vmFiles(dir);
    await execa('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', config.baseDiskPath, '-F', 'qcow2', files.overlay]);
    const args = qemuArgs({ ...config, memoryMiB: 512, vcpus: 1, network: false }, dir, {
      accel: 'kvm', memoryPath: files.memory, memoryShared: true, diskPath: files.overlay, incoming: false,
    });
    const child = execa(QEMU_BINARY, args, { reject: false, stdio: 'ignore' });
    const deadline = Date.now() + PROBE_DEADLINE_MS;
    let booted = false;
    while (Date.now() < deadline && child.exitCode === null) {
      await new Promise((r) => setTimeout(r, 100));
      const serial = await readFile(files.serialLog, 'utf8').catch(() => '');
      if (serial.includes(READY_LINE)) {
        booted = true;
        break;
      }
    }
    child.kill('SIGKILL');
    await child;
    return booted
      ? { accel: 'kvm', reason: 'a guest booted under KVM' }
      : { accel: 'tcg', reason: `a guest did not boot under KVM within ${PROBE_DEADLINE_MS} ms; using TCG emulation` };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
