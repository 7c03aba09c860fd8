import { describe, expect, it } from 'vitest';
import { cacheKey, envInputs, explainStale, type EnvInputs } from '../../src/env/cache-key.js';
import { parseSpec } from '../../src/env/spec.js';

const commitA = 'abc1234'.padEnd(40, '0');
const commitB = 'def5678'.padEnd(40, '0');

function inputs(overrides: Partial<EnvInputs> = {}): EnvInputs {
  return {
    imageDigest: 'sha256:image-1',
    repository: 'https://example.com/demo.git',
    commit: commitA,
    lockfiles: { 'package-lock.json': 'aa', 'apps/web/yarn.lock': 'bb' },
    setupSha256: 'setup-1',
    agentsMdSha256: 'agents-1',
    tier: { memoryMiB: 2048, vcpus: 2, diskGiB: 8 },
    runtimes: { node: '22.12.0', python: null },
    network: { setup: true, tasks: false },
    envSha256: 'env-1',
    engineVersion: '0.1.0',
    ...overrides,
  };
}

describe('cache key', () => {
  it('is a sha256 that does not depend on key order', () => {
    const a = inputs();
    const reordered = Object.fromEntries(Object.entries(a).reverse()) as unknown as EnvInputs;
    reordered.lockfiles = { 'apps/web/yarn.lock': 'bb', 'package-lock.json': 'aa' };
    reordered.tier = { diskGiB: 8, vcpus: 2, memoryMiB: 2048 };
    expect(cacheKey(a)).toMatch(/^[0-9a-f]{64}$/);
    expect(cacheKey(reordered)).toBe(cacheKey(a));
  });

  it('changes with every input', () => {
    const changes: Partial<EnvInputs>[] = [
      { imageDigest: 'sha256:image-2' },
      { repository: 'https://example.com/other.git' },
      { commit: commitB },
      { lockfiles: { 'package-lock.json': 'aa', 'apps/web/yarn.lock': 'cc' } },
      { lockfiles: { 'package-lock.json': 'aa' } },
      { setupSha256: 'setup-2' },
      { agentsMdSha256: null },
      { tier: { memoryMiB: 8192, vcpus: 2, diskGiB: 16 } },
      { runtimes: { node: '22.13.0', python: null } },
      { runtimes: { node: '22.12.0', python: '3.11' } },
      { network: { setup: true, tasks: true } },
      { envSha256: 'env-2' },
      { engineVersion: '0.2.0' },
      { runtimeInstallSha256: 'installer-2' },
    ];
    const keys = new Set([cacheKey(inputs()), ...changes.map((c) => cacheKey(inputs(c)))]);
    expect(keys.size).toBe(changes.length + 1);
  });

  it('is built from a spec without its secrets', () => {
    const text = (secret: string) =>
      `name: a\nrepository: { url: x }\nsetup: npm ci\ntier: small\nenv: { A: "1" }\nsecrets: { T: ${secret} }\n`;
    const from = (secret: string) =>
      envInputs({
        spec: parseSpec(text(secret), 'env.yaml', '/'),
        imageDigest: 'img',
        repository: 'x',
        commit: commitA,
        lockfiles: [{ path: 'package-lock.json', sha256: 'aa' }],
        agentsMd: '# agents\n',
        runtimes: { node: null, python: null },
        engineVersion: '0.1.0',
      });
    const built = from('one');
    expect(built.lockfiles).toEqual({ 'package-lock.json': 'aa' });
    expect(built.tier).toEqual({ memoryMiB: 2048, vcpus: 2, diskGiB: 8 });
    expect(JSON.stringify(built)).not.toContain('one');
    expect(cacheKey(from('two'))).toBe(cacheKey(built));
  });
});

describe('explainStale', () => {
  it('says nothing for equal inputs', () => {
    expect(explainStale(inputs(), inputs())).toEqual([]);
  });

  it('gives one reason per changed input', () => {
    const now = inputs({
      imageDigest: 'sha256:image-2',
      commit: commitB,
      lockfiles: { 'package-lock.json': 'a2', 'yarn.lock': 'cc' },
      setupSha256: 'setup-2',
      agentsMdSha256: 'agents-2',
      tier: { memoryMiB: 8192, vcpus: 2, diskGiB: 16 },
      runtimes: { node: '22.13.0', python: null },
      envSha256: 'env-2',
      engineVersion: '0.2.0',
    });
    expect(explainStale(inputs(), now)).toEqual([
      'base image changed',
      'repository commit changed (abc1234 → def5678)',
      'lockfile apps/web/yarn.lock removed',
      'lockfile package-lock.json changed',
      'lockfile yarn.lock added',
      'setup script changed',
      'AGENTS.md changed',
      'tier changed (small → standard)',
      'Node.js changed (22.12.0 → 22.13.0)',
      'environment variables changed',
      'engine version changed (0.1.0 → 0.2.0)',
    ]);
  });

  it('names a changed runtime installer, and never stales an environment without a runtime over it', () => {
    const withRuntime = inputs({ runtimeInstallSha256: 'installer-1' });
    expect(explainStale(withRuntime, inputs({ runtimeInstallSha256: 'installer-2' })))
      .toEqual(['the runtime installer changed (a prewarm update)']);
    // A snapshot made before the field existed has none: the same reason, not a silent stale.
    expect(explainStale(inputs(), withRuntime)).toEqual(['the runtime installer changed (a prewarm update)']);
    // A runtime added says so once, by its own reason.
    expect(explainStale(inputs({ runtimes: { node: null, python: null } }), withRuntime))
      .toEqual(['Node.js changed (Debian default → 22.12.0)']);
    const spec = parseSpec('name: demo\nrepository: { url: https://example.com/demo.git }\nsetup: "true"\ntier: small\n');
    const plain = envInputs({ spec, imageDigest: 'i', repository: 'r', commit: commitA, lockfiles: [], agentsMd: null,
      runtimes: { node: null, python: null }, engineVersion: 'e' });
    expect(plain).not.toHaveProperty('runtimeInstallSha256', expect.anything());
    expect(cacheKey(plain)).toBe(cacheKey({ ...plain, runtimeInstallSha256: undefined }));
  });

  it('names AGENTS.md additions, custom tiers and network changes', () => {
    const old = inputs({ agentsMdSha256: null });
    const now = inputs({
      tier: { memoryMiB: 4096, vcpus: 1, diskGiB: 10 },
      network: { setup: false, tasks: false },
    });
    expect(explainStale(old, now)).toEqual([
      'AGENTS.md added',
      'tier changed (small → 4096 MiB, 1 vCPU, 10 GiB)',
      'network setting changed (setup on, tasks off → setup off, tasks off)',
    ]);
  });
});
