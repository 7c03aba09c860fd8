import type { Command } from 'commander';
import { buildImage } from '../../image/build.js';
import { report } from '../output.js';
import { globals } from '../globals.js';

export function registerImage(program: Command): void {
  const image = program.command('image').description('the guest image (kernel, initramfs, root disk)');
  image
    .command('build')
    .description('build the guest image from Debian packages, or reuse the cached one')
    .option('--force', 'rebuild even when an image for the same inputs exists')
    .action(async (opts: { force?: boolean }) => {
      const g = globals(program);
      const startedAt = performance.now();
      const built = await buildImage({ force: opts.force, quiet: g.json });
      const ms = Math.round(performance.now() - startedAt);
      report(g.json, { ...built.manifest, dir: built.dir, cached: built.cached, ms }, () =>
        `image ${built.digest} ${built.cached ? 'from cache' : 'built'} in ${ms} ms\n` +
        `  kernel ${built.manifest.kernel.name} ${built.manifest.kernel.version}\n` +
        `  disk   ${built.diskPath}`);
    });
}
