import { currentImage, type Image } from '../../src/image/build.js';
import { vmConfig, type VmSize } from '../../src/engine/config.js';
import type { VmConfig } from '../../src/engine/types.js';
import { Vm } from '../../src/engine/vm.js';

/** Real-VM tests: every VM a test makes is tracked and destroyed after it, pass or fail;
 * a failing test prints the ids it made. */
const made = new Set<Vm>();

export function track<T extends Vm>(vm: T): T {
  made.add(vm);
  return vm;
}

export async function destroyTracked(): Promise<void> {
  const vms = [...made];
  made.clear();
  await Promise.all(vms.map((vm) => vm.destroy().catch((err) => {
    process.stderr.write(`test cleanup: destroying ${vm.id} failed: ${err}\n`);
  })));
}

export function trackedIds(): string[] {
  return [...made].map((vm) => vm.id);
}

export async function testImage(): Promise<Image> {
  return currentImage();
}

export async function testConfig(size: Partial<VmSize> = {}, opts: Partial<Pick<VmConfig, 'network' | 'detached'>> = {}): Promise<VmConfig> {
  return vmConfig(await testImage(), { memoryMiB: 1024, vcpus: 2, diskGiB: 8, ...size },
    { network: opts.network ?? false, detached: opts.detached ?? false });
}
