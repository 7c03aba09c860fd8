import { afterAll, describe, expect, it, onTestFailed } from 'vitest';
import { Vm } from '../../src/engine/vm.js';
import type { Guest } from '../../src/guest/guest.js';
import { waitForGuest } from '../../src/guest/ready.js';
import { destroyTracked, testConfig, track, trackedIds } from './helpers.js';

const MiB = 2 ** 20;

/**
 * Free page reporting: memory a guest frees goes back to the host. This uses a BOOTED VM,
 * whose RAM is a shared file (share=on) with reporting on. Restored clones do not return
 * freed memory on this QEMU (7.2): reporting is switched off before every snapshot, because
 * QEMU would punch the reported pages out of the snapshot's shared memory file (see
 * Guest.prepareForSnapshot). A clone's memory comes back when it is destroyed.
 */
describe('free page reporting (real QEMU)', () => {
  let guest: Guest | undefined;

  afterAll(async () => {
    await guest?.agent.close();
    await destroyTracked();
  });

  it('a guest that allocates and then frees 1 GiB: the host memory of its VMM drops again within seconds', async () => {
    onTestFailed(() => console.error('VMs of the failed test:', trackedIds()));
    const vm = track(await Vm.boot(await testConfig({ memoryMiB: 2048 })));
    guest = await waitForGuest(vm, 120_000);
    const rss = () => vm.hostMemory()?.rssBytes ?? 0;
    const baseline = rss();

    let peak = 0;
    const sampler = setInterval(() => { peak = Math.max(peak, rss()); }, 100);
    // Filled buffers: zero-filled ones might never be touched. Node exits at once after.
    const alloc = await guest.run(
      'node -e "const a = []; for (let i = 0; i < 16; i++) a.push(Buffer.alloc(64 << 20, 1)); console.log(a.length)"',
      { timeoutMs: 150_000 });
    const freedAt = performance.now();
    clearInterval(sampler);
    peak = Math.max(peak, rss());
    expect(alloc.exitCode, alloc.stderr).toBe(0);
    expect(peak - baseline).toBeGreaterThan(900 * MiB);

    let dropMs = -1;
    while (performance.now() - freedAt < 30_000) {
      if (rss() < peak - 800 * MiB) {
        dropMs = performance.now() - freedAt;
        break;
      }
      await new Promise((r) => setTimeout(r, 100));
    }
    console.log(`free page reporting: baseline ${Math.round(baseline / MiB)} MiB, peak ${Math.round(peak / MiB)} MiB, ` +
      `after ${Math.round(rss() / MiB)} MiB, dropped ${Math.round(dropMs)} ms after the guest freed it`);
    expect(dropMs).toBeGreaterThanOrEqual(0);
    expect(dropMs).toBeLessThan(10_000);
  }, 300_000);
});
