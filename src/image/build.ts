import { isAlive } from '../engine/proc.js';
import { mkdir, readdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { sha256, sha256File } from '../util/hash.js';
import { paths } from '../util/paths.js';
import { logger } from '../util/log.js';
import { createProgress } from '../util/progress.js';
import { requireRoot, requireTool } from '../util/host-tools.js';
import { NotFoundError } from '../util/errors.js';
import { GUEST_INIT, initramfsInit } from './guest-init.js';
import { resolveKernelPackage, unpackKernel, type KernelPackage } from './kernel.js';
import { buildInitramfs } from './initramfs.js';
import {
  APT_PACKAGES, BASE_PACKAGES, DEBIAN_MIRROR, DEBIAN_SUITE, ROOT_FS_SIZE,
  configureRootfs, debootstrap, guestEnvFile, hostTrust, makeDisk,
} from './rootfs.js';
import { GUEST_REFRESH_PATH, buildGuestHelper, guestHelperDigest } from './guest-helper.js';

/** Bump when the recipe changes in a way its inputs below do not capture. */
const RECIPE_VERSION = 3;

export interface ImageManifest {
  digest: string;
  builtAt: string;
  buildMs: number;
  inputs: Record<string, unknown>;
  kernel: KernelPackage & { release: string };
  packages: Record<string, string>;
  files: Record<'kernel' | 'initrd' | 'disk', { path: string; sizeBytes: number; sha256: string }>;
}

export interface Image {
  digest: string;
  dir: string;
  kernelPath: string;
  initrdPath: string;
  diskPath: string;
  manifest: ImageManifest;
}

/** Everything the image is made from. Its hash names the image: same inputs, same image. */
async function imageInputs(kernel: KernelPackage): Promise<Record<string, unknown>> {
  const trust = hostTrust();
  return {
    recipe: RECIPE_VERSION,
    suite: DEBIAN_SUITE,
    mirror: DEBIAN_MIRROR,
    packages: [...BASE_PACKAGES, ...APT_PACKAGES],
    kernel,
    rootFsSize: ROOT_FS_SIZE,
    guestInit: sha256(GUEST_INIT + initramfsInit([])),
    guestEnv: sha256(guestEnvFile(trust)),
    hostCaBundle: await sha256File(trust.caBundlePath),
    guestHelper: await guestHelperDigest(),
  };
}

async function loadImage(dir: string): Promise<Image | null> {
  const manifestPath = join(dir, 'manifest.json');
  if (!existsSync(manifestPath)) return null;
  const manifest = JSON.parse(await readFile(manifestPath, 'utf8')) as ImageManifest;
  // Paths come from where the image is now, not where it was built: a copied cache works.
  return {
    digest: manifest.digest,
    dir,
    kernelPath: join(dir, 'vmlinuz'),
    initrdPath: join(dir, 'initrd.img'),
    diskPath: join(dir, 'rootfs.qcow2'),
    manifest,
  };
}

export interface BuildOptions {
  quiet?: boolean;
  /** Rebuild even when the cache has an image for these inputs. */
  force?: boolean;
}

/** Build the guest image, or return the cached one for the same inputs. */
export async function buildImage(opts: BuildOptions = {}): Promise<Image & { cached: boolean }> {
  const log = logger({ part: 'image' });
  await requireTool('apt-cache', 'apt');
  const kernel = await resolveKernelPackage();
  const inputs = await imageInputs(kernel);
  const digest = sha256(JSON.stringify(inputs)).slice(0, 16);
  const dir = join(paths.images(), digest);

  const cached = opts.force ? null : await loadImage(dir);
  if (cached) {
    log.info({ digest }, 'image cache hit');
    return { ...cached, cached: true };
  }

  await requireRoot('prewarm image build');
  for (const [tool, pkg] of [['debootstrap', 'debootstrap'], ['mke2fs', 'e2fsprogs'],
    ['cpio', 'cpio'], ['qemu-img', 'qemu-utils'], ['busybox', 'busybox-static'], ['gcc', 'gcc']] as const) {
    await requireTool(tool, pkg);
  }

  const startedAt = performance.now();
  const work = join(paths.images(), `.tmp-${digest}-${process.pid}-${randomBytes(4).toString('hex')}`);
  await mkdir(work, { recursive: true });
  const progress = createProgress('image build', 5, opts.quiet);
  try {
    progress.step('kernel');
    const kernelRoot = await unpackKernel(kernel, join(work, 'kernel'));
    const release = (await readdir(join(kernelRoot, 'lib/modules')))[0];
    await rename(join(kernelRoot, 'boot', `vmlinuz-${release}`), join(work, 'vmlinuz'));

    progress.step('initramfs');
    await buildInitramfs(kernelRoot, work, join(work, 'initrd.img'));

    progress.step(`debootstrap ${DEBIAN_SUITE} (a few minutes)`);
    const rootfs = join(work, 'rootfs');
    await debootstrap(rootfs);

    progress.step('configure rootfs');
    const packages = await configureRootfs(rootfs, hostTrust());
    await buildGuestHelper(join(rootfs, GUEST_REFRESH_PATH.slice(1)));

    progress.step('root disk');
    await makeDisk(rootfs, work, join(work, 'rootfs.qcow2'));
    await rm(rootfs, { recursive: true, force: true });
    await rm(join(work, 'kernel'), { recursive: true, force: true });
    await rm(join(work, 'initramfs'), { recursive: true, force: true });

    const file = async (name: string) => ({
      path: join(dir, name),
      sizeBytes: (await stat(join(work, name))).size,
      sha256: await sha256File(join(work, name)),
    });
    const manifest: ImageManifest = {
      digest,
      builtAt: new Date().toISOString(),
      buildMs: Math.round(performance.now() - startedAt),
      inputs,
      kernel: { ...kernel, release },
      packages,
      files: { kernel: await file('vmlinuz'), initrd: await file('initrd.img'), disk: await file('rootfs.qcow2') },
    };
    await writeFile(join(work, 'manifest.json'), JSON.stringify(manifest, null, 2));
    await rm(dir, { recursive: true, force: true });
    await rename(work, dir);
    progress.done();
    log.info({ digest, buildMs: manifest.buildMs }, 'image built');
    return { ...(await loadImage(dir))!, cached: false };
  } catch (err) {
    progress.done();
    await rm(work, { recursive: true, force: true });
    throw err;
  }
}

/** The newest built image, without building. */
export async function currentImage(): Promise<Image> {
  const kernel = await resolveKernelPackage().catch(() => null);
  if (kernel) {
    const digest = sha256(JSON.stringify(await imageInputs(kernel))).slice(0, 16);
    const image = await loadImage(join(paths.images(), digest));
    if (image) return image;
  }
  throw new NotFoundError('no guest image for the current inputs; run `prewarm image build` first');
}

/** Remove half-built images whose builder process is gone. */
export async function reapImageBuilds(): Promise<void> {
  if (!existsSync(paths.images())) return;
  for (const entry of await readdir(paths.images())) {
    const pid = Number(/^\.tmp-[0-9a-f]+-(\d+)-/.exec(entry)?.[1]);
    if (pid && !isAlive(pid)) await rm(join(paths.images(), entry), { recursive: true, force: true });
  }
}

/** The image a snapshot was made on; its kernel must boot the snapshot's restores. */
export async function imageByDigest(digest: string): Promise<Image> {
  const image = await loadImage(join(paths.images(), digest));
  if (!image) {
    throw new NotFoundError(`guest image ${digest} is not on this host (snapshots are tied to ` +
      `the image they were made on); run \`prewarm env prepare\` to make a new snapshot`);
  }
  return image;
}
