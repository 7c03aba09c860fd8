import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { useTempHome } from './temp-home.js';
import { HostRepo, mirrorDir, resolveRef } from '../../src/env/repo.js';
import { parseSpec } from '../../src/env/spec.js';

const gitEnv = {
  GIT_AUTHOR_NAME: 't', GIT_AUTHOR_EMAIL: 't@example.com',
  GIT_COMMITTER_NAME: 't', GIT_COMMITTER_EMAIL: 't@example.com',
};

async function git(dir: string, ...args: string[]): Promise<string> {
  return (await execa('git', ['-C', dir, ...args], { env: gitEnv })).stdout.trim();
}

/** Write files (null deletes) and commit them; returns the new commit. */
async function commitFiles(dir: string, files: Record<string, string | null>): Promise<string> {
  for (const [path, content] of Object.entries(files)) {
    if (content === null) {
      await rm(join(dir, path));
    } else {
      await mkdir(dirname(join(dir, path)), { recursive: true });
      await writeFile(join(dir, path), content);
    }
  }
  await git(dir, 'add', '-A');
  await git(dir, 'commit', '-q', '-m', 'change');
  return git(dir, 'rev-parse', 'HEAD');
}

async function newRepo(name: string, files: Record<string, string>): Promise<string> {
  const dir = join(tempRoot(), name);
  await mkdir(dir);
  await git(dir, 'init', '-q', '-b', 'main');
  await commitFiles(dir, files);
  return dir;
}

const sha = (text: string) => createHash('sha256').update(text).digest('hex');

const tempRoot = useTempHome('prewarm-env-repo-');

describe('host repository mirror', () => {
  it('resolves HEAD, branches and tags, and follows new commits', async () => {
    const dir = await newRepo('refs', { 'README.md': 'one\n' });
    const first = await git(dir, 'rev-parse', 'HEAD');
    await git(dir, 'tag', 'v1');
    const spec = parseSpec(`name: r\nrepository: { path: ./refs }\nsetup: ""\ntier: small\n`, 'env.yaml', tempRoot());
    expect(await resolveRef(spec)).toBe(first);
    expect(mirrorDir(dir)).toMatch(/cache\/repos\/[0-9a-f]{64}$/);

    const second = await commitFiles(dir, { 'README.md': 'two\n' });
    const repo = new HostRepo(dir);
    expect(await repo.resolveRef('HEAD')).toBe(second);
    expect(await repo.resolveRef('main')).toBe(second);
    expect(await repo.resolveRef('v1')).toBe(first);
    expect(await repo.resolveRef(first.slice(0, 10))).toBe(first);
  });

  it('fails with REF_NOT_FOUND naming the ref and the repository', async () => {
    const dir = await newRepo('missing-ref', { 'a.txt': 'a\n' });
    const err = await new HostRepo(dir).resolveRef('no-such-branch').catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'REF_NOT_FOUND' });
    expect((err as Error).message).toContain('"no-such-branch"');
    expect((err as Error).message).toContain(dir);

    // A branch deleted at the source is pruned from the mirror on the next sync.
    await git(dir, 'branch', 'gone');
    expect(await new HostRepo(dir).resolveRef('gone')).toMatch(/^[0-9a-f]{40}$/);
    await git(dir, 'branch', '-D', 'gone');
    await expect(new HostRepo(dir).resolveRef('gone')).rejects.toMatchObject({ code: 'REF_NOT_FOUND' });
  });

  it('fails with REPO_UNREACHABLE and git stderr for a bad path or URL', async () => {
    const path = join(tempRoot(), 'does-not-exist');
    const err = await new HostRepo(path).resolveRef('HEAD').catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'REPO_UNREACHABLE' });
    expect((err as Error).message).toContain(path);
    expect((err as Error).message).toMatch(/does not exist|not a git repository|does not appear/);

    const url = 'https://127.0.0.1:1/nope.git';
    await expect(new HostRepo(url).resolveRef('HEAD')).rejects.toMatchObject({
      code: 'REPO_UNREACHABLE',
      message: expect.stringContaining(url),
    });
  });

  it('lists lockfiles at any depth, skipping node_modules and vendor', async () => {
    const files = {
      'package.json': '{}',
      'package-lock.json': 'root lock\n',
      'apps/web/yarn.lock': 'yarn lock\n',
      'services/api/requirements-dev.txt': 'pytest\n',
      'services/api/poetry.lock': 'poetry\n',
      'crates/x/Cargo.lock': 'cargo\n',
      'node_modules/dep/package-lock.json': 'ignored\n',
      'apps/web/node_modules/x/yarn.lock': 'ignored\n',
      'vendor/github.com/a/go.sum': 'ignored\n',
      'go.sum': 'go sums\n',
      'notes/requirements.md': 'not a lockfile\n',
    };
    const dir = await newRepo('locks', files);
    const repo = new HostRepo(dir);
    const commit = await repo.resolveRef('HEAD');
    const locks = await repo.listLockfiles(commit);
    expect(locks).toEqual([
      { path: 'apps/web/yarn.lock', sha256: sha('yarn lock\n') },
      { path: 'crates/x/Cargo.lock', sha256: sha('cargo\n') },
      { path: 'go.sum', sha256: sha('go sums\n') },
      { path: 'package-lock.json', sha256: sha('root lock\n') },
      { path: 'services/api/poetry.lock', sha256: sha('poetry\n') },
      { path: 'services/api/requirements-dev.txt', sha256: sha('pytest\n') },
    ]);
    expect(await repo.readFileAt(commit, 'package.json')).toBe('{}');
    expect(await repo.readFileAt(commit, 'AGENTS.md')).toBeNull();
  });

  it('bundles a commit that clones back to the same commit', async () => {
    const dir = await newRepo('bundle', { 'a.txt': 'a\n' });
    const commit = await commitFiles(dir, { 'b/c.txt': 'c\n' });
    await commitFiles(dir, { 'a.txt': 'later\n' }); // the bundle must not need this one
    const repo = new HostRepo(dir);
    await repo.sync();
    const bundle = join(tempRoot(), 'repo.bundle');
    await repo.createBundle(commit, bundle);

    const clone = join(tempRoot(), 'clone');
    await execa('git', ['clone', '-q', bundle, clone]);
    expect(await git(clone, 'rev-parse', 'HEAD')).toBe(commit);
    expect(await git(clone, 'rev-parse', '--abbrev-ref', 'HEAD')).toBe('prewarm');
    expect(await git(clone, 'log', '--format=%H')).toContain(commit);
    expect(await git(clone, 'status', '--porcelain')).toBe('');
    expect(await git(repo.dir, 'for-each-ref', '--format=%(refname)', 'refs/heads')).toBe('refs/heads/main');
  });
});
