import { randomUUID } from 'node:crypto';
import { mkdir, mkdtemp, rename, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import { PrepareError } from '../util/errors.js';
import { sha256 } from '../util/hash.js';
import { logger } from '../util/log.js';
import { prewarmHome } from '../util/paths.js';
import type { EnvSpec } from './spec.js';

/**
 * The host-side view of an environment's repository: a bare mirror under
 * cache/repos/<sha256(source)>, cloned once and fetched after. It answers what the cache key
 * needs (commit, lockfiles, AGENTS.md) before any VM boots, and bundles a commit for the guest.
 *
 * git runs on the host, so HTTPS goes through the host's CA setup. Concurrent syncs of one
 * mirror are serialised within this process only; two prewarm processes fetching the same
 * mirror at once may see git's ref-lock errors (remove when sync takes a file lock).
 */

/** Names of lockfiles whose content decides what the setup script installs. */
const LOCKFILE_NAMES = new Set([
  'package-lock.json', 'npm-shrinkwrap.json', 'yarn.lock', 'pnpm-lock.yaml', 'bun.lockb',
  'bun.lock', 'poetry.lock', 'Pipfile.lock', 'uv.lock', 'pdm.lock', 'Cargo.lock', 'go.sum',
  'Gemfile.lock', 'composer.lock', 'mix.lock', 'pubspec.lock', 'packages.lock.json',
]);
const SKIPPED_DIRS = new Set(['node_modules', 'vendor']);
/** The remote's HEAD is fetched here on every sync, so ref "HEAD" follows the remote. */
const REMOTE_HEAD = 'refs/prewarm/HEAD';
const GIT_TIMEOUT_MS = 10 * 60_000;

export interface Lockfile {
  path: string;
  sha256: string;
}

/** The string a repository is known by: its URL, or its absolute local path. */
export function repoSource(repository: EnvSpec['repository']): string {
  return repository.url ?? repository.path!;
}

export function mirrorDir(source: string): string {
  return join(prewarmHome(), 'cache', 'repos', sha256(source));
}

const syncing = new Map<string, Promise<void>>();

export class HostRepo {
  private synced = false;

  constructor(
    readonly source: string,
    readonly dir: string = mirrorDir(source),
  ) {}

  static forSpec(spec: EnvSpec): HostRepo {
    return new HostRepo(repoSource(spec.repository));
  }

  /** Clone the mirror the first time, fetch (with prune) after; once per instance. */
  async sync(): Promise<void> {
    if (this.synced) return;
    const previous = syncing.get(this.dir) ?? Promise.resolve();
    const current = previous.catch(() => undefined).then(() => this.syncNow());
    syncing.set(this.dir, current);
    try {
      await current;
      this.synced = true;
    } finally {
      if (syncing.get(this.dir) === current) syncing.delete(this.dir);
    }
  }

  /** The commit a ref names after a sync: a branch, tag, HEAD or (abbreviated) sha. */
  async resolveRef(ref: string): Promise<string> {
    // A full commit id the mirror already holds cannot move: no fetch needed.
    const pinned = /^[0-9a-f]{40}$/.test(ref) && (await this.commitOf(ref)) !== null;
    if (!pinned) await this.sync();
    const commit = await this.commitOf(ref === 'HEAD' ? REMOTE_HEAD : ref);
    if (commit === null) {
      throw new PrepareError(
        `ref "${ref}" was not found in repository ${this.source}; check that the branch, tag ` +
          'or commit exists and has been pushed',
        { code: 'REF_NOT_FOUND' },
      );
    }
    return commit;
  }

  /** Every lockfile in the tree at `commit`, at any depth outside node_modules and vendor. */
  async listLockfiles(commit: string): Promise<Lockfile[]> {
    const tree = await this.git(['ls-tree', '-r', '-z', '--full-tree', commit]);
    const found: { path: string; oid: string }[] = [];
    for (const entry of tree.toString('utf8').split('\0')) {
      const match = /^(\d+) blob ([0-9a-f]+)\t(.+)$/s.exec(entry);
      if (!match || match[1] === '120000') continue;
      const parts = match[3].split('/');
      if (parts.slice(0, -1).some((p) => SKIPPED_DIRS.has(p))) continue;
      if (isLockfileName(parts[parts.length - 1])) found.push({ path: match[3], oid: match[2] });
    }
    const blobs = await this.readBlobs(found.map((f) => f.oid));
    return found
      .map((f, i) => ({ path: f.path, sha256: sha256(blobs[i]) }))
      .sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
  }

  /** A file's text at `commit`, or null if the commit has no such file. */
  async readFileAt(commit: string, path: string): Promise<string | null> {
    const out = await execa('git', ['-C', this.dir, 'cat-file', 'blob', `${commit}:${path}`], {
      ...gitOptions(),
      reject: false,
      encoding: 'buffer',
    });
    if (out.exitCode !== 0) return null;
    return Buffer.from(out.stdout).toString('utf8');
  }

  /**
   * A git bundle with `commit` and its history as refs/heads/prewarm (HEAD points at it), so
   * `git clone <bundle>` checks that commit out. A throw-away repository borrows the mirror's
   * objects, so the mirror's refs are never touched.
   */
  async createBundle(commit: string, destFile: string): Promise<void> {
    await mkdir(join(this.dir, '..'), { recursive: true });
    const scratch = await mkdtemp(join(this.dir, '..', 'bundle-'));
    try {
      const git = (args: string[]) => execa('git', ['-C', scratch, ...args], gitOptions());
      await git(['init', '--quiet', '--bare']);
      const alternates = join(scratch, 'objects', 'info', 'alternates');
      await writeFile(alternates, `${join(this.dir, 'objects')}\n`);
      await git(['update-ref', 'refs/heads/prewarm', commit]);
      await git(['symbolic-ref', 'HEAD', 'refs/heads/prewarm']);
      const partial = `${destFile}.${randomUUID().slice(0, 8)}.partial`;
      await git(['bundle', 'create', '--quiet', partial, 'HEAD', 'refs/heads/prewarm']);
      await rename(partial, destFile);
    } finally {
      await rm(scratch, { recursive: true, force: true });
    }
  }

  private async syncNow(): Promise<void> {
    const log = logger({ part: 'env', repo: this.source });
    if (!(await exists(join(this.dir, 'HEAD')))) {
      // Clone beside the final place and rename, so a failed clone leaves nothing behind.
      await mkdir(join(this.dir, '..'), { recursive: true });
      const partial = `${this.dir}.${randomUUID().slice(0, 8)}.partial`;
      log.info({ dir: this.dir }, 'cloning repository mirror');
      try {
        await this.network(['clone', '--quiet', '--mirror', '--', this.source, partial]);
        await rename(partial, this.dir).catch(async (err: NodeJS.ErrnoException) => {
          // Another process finished first; its mirror is as good as ours.
          if (err.code !== 'ENOTEMPTY' && err.code !== 'EEXIST') throw err;
        });
      } finally {
        await rm(partial, { recursive: true, force: true });
      }
    }
    log.debug({ dir: this.dir }, 'fetching repository mirror');
    await this.network([
      '-C', this.dir, 'fetch', '--quiet', '--prune', 'origin',
      '+refs/*:refs/*', `+HEAD:${REMOTE_HEAD}`,
    ]);
  }

  /** A git command that talks to the remote; failures become REPO_UNREACHABLE. */
  private async network(args: string[]): Promise<void> {
    const out = await execa('git', args, { ...gitOptions(), stdin: 'ignore', reject: false });
    if (out.exitCode === 0) return;
    const tail = (out.stderr || out.message || '').trim().split('\n').slice(-5).join('\n');
    throw new PrepareError(
      `cannot reach repository ${this.source} (git ${args.includes('clone') ? 'clone' : 'fetch'} ` +
        `failed); check the URL or path and the host's network and credentials:\n${tail}`,
      { code: 'REPO_UNREACHABLE' },
    );
  }

  /** `git cat-file --batch` for many blobs in one process. */
  private async readBlobs(oids: string[]): Promise<Buffer[]> {
    if (oids.length === 0) return [];
    const buf = await this.git(['cat-file', '--batch'], oids.map((o) => `${o}\n`).join(''));
    const blobs: Buffer[] = [];
    let offset = 0;
    for (const oid of oids) {
      const headerEnd = buf.indexOf(0x0a, offset);
      const header = buf.subarray(offset, headerEnd).toString('utf8').split(' ');
      if (header[0] !== oid || header[1] !== 'blob') {
        const got = header.join(' ');
        throw new PrepareError(`git cat-file returned "${got}" for ${oid} in ${this.dir}`);
      }
      const sizeBytes = Number(header[2]);
      blobs.push(buf.subarray(headerEnd + 1, headerEnd + 1 + sizeBytes));
      offset = headerEnd + 1 + sizeBytes + 1;
    }
    return blobs;
  }

  private async commitOf(name: string): Promise<string | null> {
    if (name.startsWith('-')) return null;
    const out = await execa('git', ['-C', this.dir, 'rev-parse', '--verify', '--quiet',
      `${name}^{commit}`], { ...gitOptions(), reject: false });
    return out.exitCode === 0 ? out.stdout.trim() : null;
  }

  /** A local git command in the mirror; its stdout as bytes. */
  private async git(args: string[], input?: string): Promise<Buffer> {
    const out = await execa('git', ['-C', this.dir, ...args], {
      ...gitOptions(),
      encoding: 'buffer',
      ...(input === undefined ? {} : { input }),
    });
    return Buffer.from(out.stdout);
  }
}

/** The commit `spec.repository.ref` names, syncing the mirror first. */
export async function resolveRef(spec: EnvSpec): Promise<string> {
  return HostRepo.forSpec(spec).resolveRef(spec.repository.ref);
}

export function isLockfileName(name: string): boolean {
  return LOCKFILE_NAMES.has(name) || /^requirements.*\.txt$/.test(name);
}

/** Never prompt for credentials: a repository that needs them fails fast instead. */
function gitOptions() {
  return {
    timeout: GIT_TIMEOUT_MS,
    env: {
      GIT_TERMINAL_PROMPT: '0',
      GIT_SSH_COMMAND: process.env.GIT_SSH_COMMAND ?? 'ssh -o BatchMode=yes',
      LC_ALL: 'C',
    },
  };
}

async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  );
}
