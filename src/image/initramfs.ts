import { chmod, copyFile, mkdir, writeFile } from 'node:fs/promises';
import { createWriteStream } from 'node:fs';
import { join } from 'node:path';
import { createGzip } from 'node:zlib';
import { pipeline } from 'node:stream/promises';
import { execa } from 'execa';
import { BOOT_MODULES, moduleIndex, moduleLoadOrder } from './kernel.js';
import { initramfsInit } from './guest-init.js';

const BUSYBOX = '/bin/busybox';

/** Build a gzip'd newc cpio with static busybox, the boot modules and `/init`. */
export async function buildInitramfs(kernelRoot: string, workDir: string, outFile: string): Promise<string[]> {
  const root = join(workDir, 'initramfs');
  for (const dir of ['bin', 'dev', 'proc', 'sys', 'newroot', 'lib/modules']) {
    await mkdir(join(root, dir), { recursive: true });
  }
  await copyFile(BUSYBOX, join(root, 'bin/busybox'));
  await chmod(join(root, 'bin/busybox'), 0o755);

  const { byName } = await moduleIndex(kernelRoot);
  const order = await moduleLoadOrder(byName, BOOT_MODULES);
  for (const name of order) await copyFile(byName.get(name)!, join(root, 'lib/modules', `${name}.ko`));

  await writeFile(join(root, 'init'), initramfsInit(order), { mode: 0o755 });

  const list = await execa('find', ['.'], { cwd: root });
  const cpio = execa('cpio', ['-o', '-H', 'newc', '--quiet'], {
    cwd: root,
    input: list.stdout + '\n',
    encoding: 'buffer',
    buffer: false,
  });
  await Promise.all([pipeline(cpio.stdout!, createGzip({ level: 6 }), createWriteStream(outFile)), cpio]);
  return order;
}
