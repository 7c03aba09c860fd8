import { createHash } from 'node:crypto';
import { lstat, mkdir, mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { join, relative } from 'node:path';
import { execa } from 'execa';
import { afterAll, afterEach, beforeAll, describe, expect, it, onTestFailed } from 'vitest';
import { Vm } from '../../src/engine/vm.js';
import type { Guest } from '../../src/guest/guest.js';
import { waitForGuest } from '../../src/guest/ready.js';
import { extractDiff } from '../../src/task/diff.js';
import { paths } from '../../src/util/paths.js';
import { destroyTracked, testConfig, track, trackedIds } from './helpers.js';

const AGENT_TIMEOUT_MS = 120_000;
const REPO = '/root/repo';

let guest: Guest;
let work: string;
let baseCommit: string;

async function sh(script: string, cwd = REPO): Promise<string> {
  const result = await guest.run(script, { timeoutMs: 60_000, cwd });
  expect(result.exitCode, `${script}: ${result.stderr}`).toBe(0);
  return result.stdout.trim();
}

/** A base commit with text, binary, executable and ignored files. */
const BASE = `
git init -q -b main .
git config user.email test@example.com && git config user.name test
printf 'line1\\nline2\\nline3\\n' > modify.txt
printf 'delete me\\n' > delete.txt
seq 1 200 > rename-src.txt
head -c 3000 /dev/urandom > blob.bin
printf '#!/bin/sh\\necho hi\\n' > run.sh && chmod +x run.sh
printf 'plain\\n' > make-exec.sh
printf 'ignored.log\\nbuild/\\n' > .gitignore
mkdir -p sub/dir && printf 'nested\\n' > sub/dir/file.txt
git add -A && git commit -qm base
`;

/** What a task might do: every kind of change git can carry, plus ignored output. */
const CHANGE = `
printf 'line1\\nchanged\\nline3\\nline4\\n' > modify.txt
rm delete.txt
mv rename-src.txt sub/renamed.txt && echo 201 >> sub/renamed.txt
head -c 4000 /dev/urandom > blob.bin
head -c 2000 /dev/urandom > new.bin
printf 'new\\n' > sub/dir/new.txt
chmod +x make-exec.sh && chmod -x run.sh
printf 'no newline' > nonl.txt
printf 'spaced\\n' > 'with space.txt'
ln -s modify.txt link
echo noise > ignored.log && mkdir build && echo obj > build/out.o
git add modify.txt
`;

type Tree = Map<string, { sha256: string; executable: boolean; symlink: boolean }>;

/** The guest's worktree as git sees it: tracked and untracked files, ignored ones left out. */
async function guestTree(): Promise<Tree> {
  const list = 'git ls-files -co --exclude-standard -z';
  const hashes = await sh(`${list} | xargs -0 -r sha256sum 2>/dev/null || :`);
  const modes = await sh(`${list} | xargs -0 -r stat -c '%f %n' 2>/dev/null || :`);
  const tree: Tree = new Map();
  for (const line of hashes.split('\n').filter(Boolean)) {
    const [, sha256, name] = /^(\w+) {2}(.*)$/.exec(line)!;
    tree.set(name, { sha256, executable: false, symlink: false });
  }
  for (const line of modes.split('\n').filter(Boolean)) {
    const [, hexMode, name] = /^(\w+) (.*)$/.exec(line)!;
    const mode = parseInt(hexMode, 16);
    tree.get(name)!.executable = (mode & 0o100) !== 0;
    tree.get(name)!.symlink = (mode & 0o170000) === 0o120000;
  }
  return tree;
}

async function hostTree(dir: string, root = dir, tree: Tree = new Map()): Promise<Tree> {
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.name === '.git' && dir === root) continue;
    if (entry.isDirectory()) {
      await hostTree(path, root, tree);
      continue;
    }
    const stats = await lstat(path);
    tree.set(relative(root, path), {
      sha256: createHash('sha256').update(await readFile(path)).digest('hex'),
      executable: (stats.mode & 0o100) !== 0,
      symlink: stats.isSymbolicLink(),
    });
  }
  return tree;
}

describe('the task diff (real QEMU)', () => {
  beforeAll(async () => {
    await mkdir(paths.tmp(), { recursive: true });
    work = await mkdtemp(join(paths.tmp(), 'test-task-diff-'));
    const vm = track(await Vm.boot(await testConfig({ memoryMiB: 1024 })));
    guest = await waitForGuest(vm, AGENT_TIMEOUT_MS);
    await sh(`mkdir -p ${REPO}`, '/');
    await sh(BASE);
    baseCommit = await sh('git rev-parse HEAD');
    await sh('git bundle create -q /tmp/base.bundle main');
    await sh(CHANGE);
  });

  afterEach(() => onTestFailed(() => console.error('VMs of the failed test:', trackedIds())));
  afterAll(async () => {
    await guest?.agent.close();
    await destroyTracked();
    await rm(work, { recursive: true, force: true });
  });

  it('makes a patch that rebuilds the worktree byte for byte on the host', async () => {
    const indexBefore = await sh('sha256sum .git/index; git status --porcelain');

    const diff = await extractDiff(guest, { repoDir: REPO, baseCommit, maxBytes: 1024 * 1024 });

    expect(await sh('sha256sum .git/index; git status --porcelain')).toBe(indexBefore);
    expect(await sh('ls -d /tmp/prewarm-diff.* 2>/dev/null || :')).toBe('');
    if (diff.tooLarge) throw new Error('the patch should fit');
    expect(diff.sizeBytes).toBe(diff.patch.length);
    // modify, delete, rename, 2 binary, 4 new text files with the link, 2 mode changes.
    expect(diff.stats).toEqual({ filesChanged: 11, insertions: 7, deletions: 2, binaryFiles: 2 });

    const text = diff.patch.toString('latin1');
    expect(text).toContain('rename from rename-src.txt\nrename to sub/renamed.txt');
    expect(text).toContain('deleted file mode 100644');
    expect(text).toContain('new file mode 120000');
    expect(text).toContain('old mode 100644\nnew mode 100755');
    expect(text).toContain('old mode 100755\nnew mode 100644');
    expect(text).toContain('GIT binary patch');
    expect(text).not.toContain('ignored.log');
    expect(text).not.toContain('build/out.o');

    // Rebuild on the host: clone the base from a bundle, apply, compare every file.
    const bundle = join(work, 'base.bundle');
    await writeFile(bundle, await guest.agent.readFile('/tmp/base.bundle'));
    const clone = join(work, 'clone');
    await execa('git', ['clone', '-q', '-b', 'main', bundle, clone]);
    expect((await execa('git', ['-C', clone, 'rev-parse', 'HEAD'])).stdout).toBe(baseCommit);
    await writeFile(join(work, 'task.patch'), diff.patch);
    await execa('git', ['-C', clone, 'apply', '--binary', join(work, 'task.patch')]);

    const expected = await guestTree();
    expect(expected.has('ignored.log')).toBe(false);
    expect(expected.has('sub/renamed.txt')).toBe(true);
    expect(await hostTree(clone)).toEqual(expected);
  });

  it('returns no patch at all when it is larger than the limit', async () => {
    const full = await extractDiff(guest, { repoDir: REPO, baseCommit });
    const small = await extractDiff(guest, { repoDir: REPO, baseCommit, maxBytes: 1000 });

    expect(full.tooLarge).toBe(false);
    expect(small).toEqual({ tooLarge: true, sizeBytes: full.sizeBytes, stats: full.stats });
    expect('patch' in small).toBe(false);
    expect(await sh('ls -d /tmp/prewarm-diff.* 2>/dev/null || :')).toBe('');
  });

  it('returns an empty patch for an unchanged tree, and names a base that is not a commit', async () => {
    const clean = '/root/clean';
    await sh(`mkdir -p ${clean} && cd ${clean} && git init -q . && echo a > a && ` +
      'git add a && git -c user.name=t -c user.email=t@e commit -qm a');
    const diff = await extractDiff(guest, { repoDir: clean, baseCommit: 'HEAD' });
    expect(diff).toMatchObject({ tooLarge: false, sizeBytes: 0 });
    expect(diff.stats).toEqual({ filesChanged: 0, insertions: 0, deletions: 0, binaryFiles: 0 });

    await expect(extractDiff(guest, { repoDir: clean, baseCommit: 'deadbeef' }))
      .rejects.toThrow(/deadbeef is not a commit in \/root\/clean/);
  });
});
