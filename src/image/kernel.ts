import { mkdir, readdir, readFile, stat, writeFile } from 'node:fs/promises';
import { paths } from '../util/paths.js';
import { join } from 'node:path';
import { execa } from 'execa';
import { PrewarmError } from '../util/errors.js';

/** Debian's cloud kernel: virtio drivers as modules, small, boots under TCG and KVM. */
export const KERNEL_META_PACKAGE = 'linux-image-cloud-amd64';

/** Modules the guest needs before its root disk and agent port exist. */
export const BOOT_MODULES = [
  'virtio_mmio',
  'virtio_blk',
  'virtio_console',
  'virtio_balloon',
  'virtio_net',
];

export interface KernelPackage {
  name: string;
  version: string;
}

const APT_LISTS = '/var/lib/apt/lists';

/**
 * The versioned kernel package the meta package points at, read from the host's apt lists.
 * apt-cache takes seconds on a busy host and every freshness check needs this answer, so it
 * is cached until the lists change (`apt-get update` touches their directory).
 */
export async function resolveKernelPackage(): Promise<KernelPackage> {
  const cacheFile = join(paths.hostProbes(), 'kernel-package.json');
  const listsMtimeMs = (await stat(APT_LISTS).catch(() => null))?.mtimeMs ?? 0;
  const cached = await readFile(cacheFile, 'utf8').then((t) => JSON.parse(t) as { listsMtimeMs: number; pkg: KernelPackage }, () => null);
  if (cached && cached.listsMtimeMs === listsMtimeMs) return cached.pkg;
  const pkg = await queryKernelPackage();
  await mkdir(paths.hostProbes(), { recursive: true });
  await writeFile(cacheFile, JSON.stringify({ listsMtimeMs, pkg }));
  return pkg;
}

async function queryKernelPackage(): Promise<KernelPackage> {
  const deps = await execa('apt-cache', ['depends', KERNEL_META_PACKAGE], { reject: false });
  const name = /Depends: (linux-image-[^\s]+)/.exec(deps.stdout)?.[1];
  if (!name) {
    throw new PrewarmError(
      'IMAGE_KERNEL',
      `cannot resolve ${KERNEL_META_PACKAGE} with apt-cache; run \`apt-get update\` ` +
        `(scripts/setup.sh does) and try again`,
    );
  }
  const policy = await execa('apt-cache', ['policy', name]);
  const version = /Candidate: (\S+)/.exec(policy.stdout)?.[1] ?? 'unknown';
  return { name, version };
}

/** Download the kernel package and unpack it into `dir` (never installed on the host). */
export async function unpackKernel(pkg: KernelPackage, dir: string): Promise<string> {
  await mkdir(dir, { recursive: true });
  await execa('apt-get', ['download', `${pkg.name}=${pkg.version}`], { cwd: dir });
  const deb = (await readdir(dir)).find((f) => f.endsWith('.deb'));
  if (!deb) throw new PrewarmError('IMAGE_KERNEL', `apt-get download ${pkg.name} produced no .deb`);
  const root = join(dir, 'root');
  await execa('dpkg-deb', ['-x', join(dir, deb), root]);
  return root;
}

/** Module file paths under lib/modules/<release>/kernel, by module name. */
export async function moduleIndex(kernelRoot: string): Promise<{ release: string; byName: Map<string, string> }> {
  const release = (await readdir(join(kernelRoot, 'lib/modules')))[0];
  const base = join(kernelRoot, 'lib/modules', release);
  const byName = new Map<string, string>();
  for (const entry of await readdir(base, { recursive: true })) {
    if (entry.endsWith('.ko')) byName.set(entry.split('/').pop()!.slice(0, -3).replace(/-/g, '_'), join(base, entry));
  }
  return { release, byName };
}

/** `depends=` from a module's .modinfo section. */
async function moduleDepends(file: string): Promise<string[]> {
  const text = (await readFile(file)).toString('latin1');
  const match = /depends=([^\0]*)\0/.exec(text);
  return match?.[1] ? match[1].split(',').filter(Boolean).map((m) => m.replace(/-/g, '_')) : [];
}

/** The wanted modules and everything they depend on, dependencies first. */
export async function moduleLoadOrder(byName: Map<string, string>, wanted: string[]): Promise<string[]> {
  const order: string[] = [];
  const seen = new Set<string>();
  const visit = async (name: string): Promise<void> => {
    if (seen.has(name)) return;
    seen.add(name);
    const file = byName.get(name);
    if (!file) throw new PrewarmError('IMAGE_KERNEL', `kernel module ${name} not found in the kernel package`);
    for (const dep of await moduleDepends(file)) await visit(dep);
    order.push(name);
  };
  for (const name of wanted) await visit(name);
  return order;
}
