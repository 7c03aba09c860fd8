import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadSpec, parseSpec, resolveSecrets, resolveTier } from '../../src/env/spec.js';

const base = `
name: demo-app
repository: { url: https://example.com/demo.git }
setup: npm ci
tier: small
`;

function parse(text: string) {
  return parseSpec(text, 'env.yaml', '/specs');
}

function errorOf(text: string): string {
  try {
    parse(text);
  } catch (err) {
    expect((err as { code: string }).code).toBe('BAD_INPUT');
    return (err as Error).message;
  }
  throw new Error('expected the spec to be rejected');
}

describe('env spec', () => {
  it('fills defaults', () => {
    const spec = parse(base);
    expect(spec.repository).toEqual({ url: 'https://example.com/demo.git', ref: 'HEAD' });
    expect(spec.network).toEqual({ setup: true, tasks: false });
    expect(spec.task).toEqual({ timeoutSeconds: 1800, pidsMax: 1024 });
    expect(spec.env).toEqual({});
    expect(spec.runtimes).toEqual({});
    expect(resolveTier(spec.tier)).toEqual({ memoryMiB: 2048, vcpus: 2, diskGiB: 8 });
  });

  it('resolves named and custom tiers', () => {
    expect(resolveTier('standard')).toEqual({ memoryMiB: 8192, vcpus: 2, diskGiB: 16 });
    expect(resolveTier('large')).toEqual({ memoryMiB: 16384, vcpus: 2, diskGiB: 32 });
    const spec = parse(base.replace('tier: small', 'tier: { memoryMiB: 4096, vcpus: 1, diskGiB: 10 }'));
    expect(resolveTier(spec.tier)).toEqual({ memoryMiB: 4096, vcpus: 1, diskGiB: 10 });
  });

  it('names unknown keys with their path', () => {
    expect(errorOf(`${base}netwrok: { setup: false }\n`)).toBe('env.yaml: netwrok: unknown key');
    expect(errorOf(`${base}task: { timeoutSecs: 5 }\n`)).toBe('env.yaml: task.timeoutSecs: unknown key');
  });

  it('names fields of the wrong type', () => {
    const text = base.replace('tier: small', 'tier: { memoryMiB: lots, vcpus: 2, diskGiB: 8 }');
    expect(errorOf(text)).toBe('env.yaml: tier.memoryMiB: expected a number, got a string');
    expect(errorOf(`${base}network: { setup: "no" }\n`)).toBe(
      'env.yaml: network.setup: expected a boolean, got a string',
    );
    expect(errorOf(base.replace('tier: small', 'tier: huge'))).toMatch(/^env\.yaml: tier: expected "small"/);
    expect(errorOf(base.replace('setup: npm ci\n', ''))).toBe('env.yaml: setup: is required');
    expect(errorOf(base.replace('demo-app', 'Demo_App'))).toMatch(/^env\.yaml: name: must be a slug/);
  });

  it('requires exactly one of url and path', () => {
    const both = base.replace('{ url: https://example.com/demo.git }', '{ url: https://x/y.git, path: ../y }');
    expect(errorOf(both)).toBe('env.yaml: repository: give exactly one of url and path');
    const none = base.replace('{ url: https://example.com/demo.git }', '{ ref: main }');
    expect(errorOf(none)).toBe('env.yaml: repository: give exactly one of url and path');
  });

  it('resolves repository.path against the spec file directory', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'prewarm-env-spec-'));
    const file = join(dir, 'env.yaml');
    await writeFile(file, base.replace('{ url: https://example.com/demo.git }', '{ path: ./repo, ref: v1 }'));
    const spec = await loadSpec(file);
    expect(spec.repository).toEqual({ path: join(dir, 'repo'), ref: 'v1' });
    await expect(loadSpec(join(dir, 'missing.yaml'))).rejects.toThrow(/missing\.yaml/);
    await rm(dir, { recursive: true, force: true });
  });

  it('reports YAML syntax errors with the file and line', () => {
    expect(errorOf('name: a\nsetup: [unclosed\n')).toMatch(/^env\.yaml: line \d+: /);
  });

  it('keeps env values as strings and rejects bad variable names', () => {
    const spec = parse(`${base}env: { PORT: 3000, DEBUG: true, NAME: x }\n`);
    expect(spec.env).toEqual({ PORT: '3000', DEBUG: 'true', NAME: 'x' });
    expect(errorOf(`${base}env: { "bad-name": x }\n`)).toMatch(/^env\.yaml: env\.bad-name: invalid key/);
    expect(errorOf(`${base}env: { A: x }\nsecrets: { A: y }\n`)).toBe('env.yaml: secrets.A: also set in env.A');
  });

  it('reads secrets from host variables at use time', () => {
    const spec = parse(`${base}secrets: { TOKEN: "\${HOST_TOKEN}", LITERAL: abc }\n`);
    expect(spec.secrets.TOKEN).toBe('${HOST_TOKEN}');
    expect(resolveSecrets(spec, { HOST_TOKEN: 's3cret' })).toEqual({ TOKEN: 's3cret', LITERAL: 'abc' });
    expect(() => resolveSecrets(spec, {})).toThrow(/secret TOKEN .* host variable HOST_TOKEN/);
  });
});
