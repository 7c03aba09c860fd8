import { copyFile, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { execa } from 'execa';
import { PrewarmError } from '../util/errors.js';
import { GUEST_INIT } from './guest-init.js';

export const DEBIAN_SUITE = 'bookworm';
export const DEBIAN_MIRROR = 'http://deb.debian.org/debian';

/** Installed by debootstrap. npm comes after, through apt in the chroot: debootstrap's own
 * resolver cannot configure Debian's npm and its ~400 node-* dependencies. */
export const BASE_PACKAGES = [
  'ca-certificates', 'git', 'qemu-guest-agent', 'nodejs', 'iproute2', 'procps', 'e2fsprogs',
  'util-linux', 'xz-utils',
];
export const APT_PACKAGES = ['npm'];

/** The root filesystem's size; a larger tier grows it at boot (resize2fs in prewarm-init). */
export const ROOT_FS_SIZE = '8G';

/** The trust store and proxy settings of the host, which the guest inherits. */
export interface HostTrust {
  caBundlePath: string;
  proxyEnv: Record<string, string>;
}

export function hostTrust(env = process.env): HostTrust {
  const candidates = [env.SSL_CERT_FILE, env.NODE_EXTRA_CA_CERTS, '/etc/ssl/certs/ca-certificates.crt'];
  const caBundlePath = candidates.find((p): p is string => !!p && existsSync(p));
  if (!caBundlePath) {
    throw new PrewarmError('IMAGE_TRUST', 'no CA bundle found on the host (SSL_CERT_FILE or ' +
      '/etc/ssl/certs/ca-certificates.crt); install ca-certificates');
  }
  const proxyEnv: Record<string, string> = {};
  for (const key of ['http_proxy', 'https_proxy', 'no_proxy', 'HTTP_PROXY', 'HTTPS_PROXY', 'NO_PROXY']) {
    if (env[key]) proxyEnv[key] = env[key]!;
  }
  return { caBundlePath, proxyEnv };
}

const GUEST_CA = '/etc/ssl/certs/ca-certificates.crt';

/** Variables every guest command gets: a sane PATH, the host's CA bundle for every TLS stack
 * (OpenSSL, git, Node's bundled store, Python) and the host's proxy. */
export function guestEnvFile(trust: HostTrust): string {
  const vars: Record<string, string> = {
    PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
    HOME: '/root',
    LANG: 'C.UTF-8',
    SSL_CERT_FILE: GUEST_CA,
    NODE_EXTRA_CA_CERTS: GUEST_CA,
    GIT_SSL_CAINFO: GUEST_CA,
    REQUESTS_CA_BUNDLE: GUEST_CA,
    PIP_CERT: GUEST_CA,
    npm_config_cafile: GUEST_CA,
    npm_config_update_notifier: 'false',
    npm_config_fund: 'false',
    npm_config_audit: 'false',
    ...trust.proxyEnv,
  };
  return Object.entries(vars).map(([k, v]) => `${k}='${v.replace(/'/g, `'\\''`)}'`).join('\n') + '\n';
}

/** Shell that loads the guest's environment (and a runtime's, once a prepare installed one)
 * into the current shell, exported. */
export const GUEST_ENV_LOAD =
  'set -a; . /etc/prewarm/env; [ -f /etc/prewarm/runtime.env ] && . /etc/prewarm/runtime.env; set +a';

/** `prewarm-run CMD...`: runs CMD with the guest's environment (and a runtime's, once a
 * prepare installed one). Every command prewarm runs in a guest goes through it. */
const RUN_WRAPPER = `#!/bin/sh
set -a
. /etc/prewarm/env
[ -f /etc/prewarm/runtime.env ] && . /etc/prewarm/runtime.env
set +a
exec "$@"
`;

export async function debootstrap(dir: string, onLine?: (line: string) => void): Promise<void> {
  const child = execa('debootstrap', [
    '--variant=minbase', `--include=${BASE_PACKAGES.join(',')}`, DEBIAN_SUITE, dir, DEBIAN_MIRROR,
  ], { all: true, reject: false });
  child.all?.on('data', (chunk: Buffer) => onLine?.(chunk.toString().trim().split('\n').pop() ?? ''));
  const result = await child;
  if (result.exitCode !== 0) {
    throw new PrewarmError('IMAGE_DEBOOTSTRAP', `debootstrap of ${DEBIAN_SUITE} failed ` +
      `(exit ${result.exitCode}); is ${DEBIAN_MIRROR} reachable? Last output:\n` +
      String(result.all).split('\n').slice(-15).join('\n'));
  }
}

async function chroot(dir: string, script: string): Promise<string> {
  const result = await execa('chroot', [dir, '/bin/sh', '-c', script], {
    env: { DEBIAN_FRONTEND: 'noninteractive', PATH: '/usr/sbin:/usr/bin:/sbin:/bin', LANG: 'C' },
    extendEnv: false,
    all: true,
    reject: false,
  });
  if (result.exitCode !== 0) {
    throw new PrewarmError('IMAGE_CHROOT', `in the image's chroot, \`${script}\` failed ` +
      `(exit ${result.exitCode}):\n${String(result.all).split('\n').slice(-15).join('\n')}`);
  }
  return String(result.stdout);
}

/** Everything after debootstrap: npm, the init, the guest's trust and proxy, cleanup.
 * Returns the installed package versions. */
export async function configureRootfs(dir: string, trust: HostTrust): Promise<Record<string, string>> {
  await copyFile('/etc/resolv.conf', join(dir, 'etc/resolv.conf'));
  await chroot(dir, `apt-get install -y -q --no-install-recommends ${APT_PACKAGES.join(' ')}`);
  await chroot(dir, 'apt-get clean && rm -rf /var/lib/apt/lists/* /usr/share/doc/* /usr/share/man/*');

  await writeFile(join(dir, 'etc/resolv.conf'), 'nameserver 10.0.2.3\n');
  await writeFile(join(dir, 'etc/hostname'), 'prewarm\n');
  await writeFile(join(dir, 'etc/hosts'), '127.0.0.1 localhost prewarm\n');
  await writeFile(join(dir, 'sbin/prewarm-init'), GUEST_INIT, { mode: 0o755 });
  await writeFile(join(dir, 'usr/local/bin/prewarm-run'), RUN_WRAPPER, { mode: 0o755 });
  await mkdir(join(dir, 'etc/prewarm'), { recursive: true });
  await writeFile(join(dir, 'etc/prewarm/env'), guestEnvFile(trust));
  await writeFile(join(dir, 'etc/profile.d/prewarm.sh'), `${GUEST_ENV_LOAD}\n`);
  await writeFile(join(dir, GUEST_CA), await readFile(trust.caBundlePath));
  await mkdir(join(dir, 'workspace'), { recursive: true });

  const list = await chroot(dir, "dpkg-query -W -f '${Package}=${Version}\\n'");
  await rm(join(dir, 'debootstrap'), { recursive: true, force: true });
  return Object.fromEntries(list.trim().split('\n').map((l) => l.split('=', 2) as [string, string]));
}

/** ext4 from the directory (no mounting), then a compact qcow2 for overlays to sit on. */
export async function makeDisk(dir: string, workDir: string, outQcow2: string): Promise<void> {
  const raw = join(workDir, 'rootfs.ext4');
  await execa('mke2fs', ['-q', '-t', 'ext4', '-d', dir, '-L', 'prewarm-root', raw, ROOT_FS_SIZE]);
  await execa('qemu-img', ['convert', '-O', 'qcow2', raw, outQcow2]);
  await rm(raw, { force: true });
}
