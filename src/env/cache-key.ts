import { sha256 } from '../util/hash.js';
import type { Lockfile } from './repo.js';
import type { ResolvedRuntimes } from './runtimes.js';
import { TIERS, resolveTier, type EnvSpec, type Tier } from './spec.js';

/**
 * Everything a snapshot depends on. Two equal inputs give one cache key; when any input
 * changes the snapshot is stale, and explainStale() says why in plain words. Secrets are not
 * an input (they are injected per task and never stored); plain env vars count through a hash.
 */
export interface EnvInputs {
  imageDigest: string;
  /** The repository's URL or absolute local path. */
  repository: string;
  commit: string;
  /** Lockfile path -> sha256 of its content. */
  lockfiles: Record<string, string>;
  setupSha256: string;
  agentsMdSha256: string | null;
  tier: Tier;
  runtimes: { node: string | null; python: string | null };
  /** sha256 of how the runtimes are installed (the script, the packages); absent when the
   * Debian defaults are used, so environments without a runtime never see it change. */
  runtimeInstallSha256?: string;
  network: { setup: boolean; tasks: boolean };
  envSha256: string;
  engineVersion: string;
}

export interface EnvInputSources {
  spec: EnvSpec;
  imageDigest: string;
  repository: string;
  commit: string;
  lockfiles: Lockfile[];
  agentsMd: string | null;
  runtimes: ResolvedRuntimes;
  engineVersion: string;
}

export function envInputs(from: EnvInputSources): EnvInputs {
  return {
    imageDigest: from.imageDigest,
    repository: from.repository,
    commit: from.commit,
    lockfiles: Object.fromEntries(from.lockfiles.map((l) => [l.path, l.sha256])),
    setupSha256: sha256(from.spec.setup),
    agentsMdSha256: from.agentsMd === null ? null : sha256(from.agentsMd),
    tier: resolveTier(from.spec.tier),
    runtimes: {
      node: from.runtimes.node?.version ?? null,
      python: from.runtimes.python?.version ?? null,
    },
    runtimeInstallSha256: from.runtimes.node || from.runtimes.python
      ? sha256(canonicalJson([from.runtimes.node?.installScript ?? null, from.runtimes.python?.aptPackages ?? null]))
      : undefined,
    network: { ...from.spec.network },
    envSha256: sha256(canonicalJson(from.spec.env)),
    engineVersion: from.engineVersion,
  };
}

/** sha256 (hex) of the inputs as canonical JSON: sorted keys, no whitespace. */
export function cacheKey(inputs: EnvInputs): string {
  return sha256(canonicalJson(inputs));
}

export function canonicalJson(value: unknown): string {
  return JSON.stringify(sortKeys(value));
}

function sortKeys(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(sortKeys);
  if (value === null || typeof value !== 'object') return value;
  const entries = Object.entries(value as Record<string, unknown>)
    .filter(([, v]) => v !== undefined)
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  return Object.fromEntries(entries.map(([k, v]) => [k, sortKeys(v)]));
}

/** One human reason per input that differs between a snapshot's inputs and today's. */
export function explainStale(old: EnvInputs, now: EnvInputs): string[] {
  const reasons: string[] = [];
  const same = (a: unknown, b: unknown) => canonicalJson(a) === canonicalJson(b);
  const keys = new Set([...Object.keys(old), ...Object.keys(now)]) as Set<keyof EnvInputs>;

  for (const key of keys) {
    const [a, b] = [old[key], now[key]];
    if (same(a, b)) continue;
    switch (key) {
      case 'imageDigest':
        reasons.push('base image changed');
        break;
      case 'repository':
        reasons.push(`repository changed (${a} → ${b})`);
        break;
      case 'commit':
        reasons.push(`repository commit changed (${short(old.commit)} → ${short(now.commit)})`);
        break;
      case 'lockfiles':
        reasons.push(...lockfileReasons(old.lockfiles ?? {}, now.lockfiles ?? {}));
        break;
      case 'setupSha256':
        reasons.push('setup script changed');
        break;
      case 'agentsMdSha256':
        reasons.push(`AGENTS.md ${a === null ? 'added' : b === null ? 'removed' : 'changed'}`);
        break;
      case 'tier':
        reasons.push(`tier changed (${tierLabel(old.tier)} → ${tierLabel(now.tier)})`);
        break;
      case 'runtimes':
        for (const [name, label] of [['node', 'Node.js'], ['python', 'Python']] as const) {
          const [x, y] = [old.runtimes?.[name] ?? null, now.runtimes?.[name] ?? null];
          const show = (v: string | null) => v ?? 'Debian default';
          if (x !== y) reasons.push(`${label} changed (${show(x)} → ${show(y)})`);
        }
        break;
      case 'runtimeInstallSha256':
        // Also when one side has none: a runtime added or removed gives its own reason too.
        if (same(old.runtimes, now.runtimes)) reasons.push('the runtime installer changed (a prewarm update)');
        break;
      case 'network':
        reasons.push(
          `network setting changed (${netLabel(old.network)} → ${netLabel(now.network)})`,
        );
        break;
      case 'envSha256':
        reasons.push('environment variables changed');
        break;
      case 'engineVersion':
        reasons.push(`engine version changed (${a} → ${b})`);
        break;
      default:
        reasons.push(`${String(key)} changed`);
    }
  }
  return reasons;
}

function lockfileReasons(old: Record<string, string>, now: Record<string, string>): string[] {
  const paths = [...new Set([...Object.keys(old), ...Object.keys(now)])].sort();
  return paths.flatMap((path) => {
    if (!(path in old)) return [`lockfile ${path} added`];
    if (!(path in now)) return [`lockfile ${path} removed`];
    return old[path] === now[path] ? [] : [`lockfile ${path} changed`];
  });
}

function tierLabel(tier: Tier | undefined): string {
  if (!tier) return 'none';
  const named = Object.entries(TIERS).find(([, t]) => canonicalJson(t) === canonicalJson(tier));
  return named ? named[0] : `${tier.memoryMiB} MiB, ${tier.vcpus} vCPU, ${tier.diskGiB} GiB`;
}

function netLabel(network: EnvInputs['network'] | undefined): string {
  if (!network) return 'none';
  return `setup ${network.setup ? 'on' : 'off'}, tasks ${network.tasks ? 'on' : 'off'}`;
}

function short(commit: string | undefined): string {
  return commit ? commit.slice(0, 7) : 'none';
}
