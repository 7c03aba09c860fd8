import { buildImage, type Image } from '../image/build.js';
import { qemuVersion } from '../engine/qemu-binary.js';
import { envInputs, cacheKey, type EnvInputs } from './cache-key.js';
import { HostRepo, repoSource } from './repo.js';
import { resolveRuntimes, type ResolvedRuntimes } from './runtimes.js';
import type { EnvSpec } from './spec.js';

/** Bump when the prepare flow changes what a snapshot contains. */
export const PREPARE_VERSION = 1;

export interface ResolvedEnv {
  spec: EnvSpec;
  image: Image;
  repo: HostRepo;
  commit: string;
  agentsMd: string | null;
  runtimes: ResolvedRuntimes;
  inputs: EnvInputs;
  cacheKey: string;
}

/** Everything a prepare depends on, found on the host before any VM boots: the image, the
 * commit the ref names, lockfiles, AGENTS.md and runtimes. */
export async function resolveEnv(spec: EnvSpec, opts: { quiet?: boolean } = {}): Promise<ResolvedEnv> {
  const image = await buildImage({ quiet: opts.quiet });
  const repo = HostRepo.forSpec(spec);
  const commit = await repo.resolveRef(spec.repository.ref);
  const [lockfiles, agentsMd] = await Promise.all([repo.listLockfiles(commit), repo.readFileAt(commit, 'AGENTS.md')]);
  const runtimes = await resolveRuntimes(spec, repo, commit);
  const inputs = envInputs({
    spec,
    imageDigest: image.digest,
    repository: repoSource(spec.repository),
    commit,
    lockfiles,
    agentsMd,
    runtimes,
    engineVersion: `qemu-${await qemuVersion()}/prepare-${PREPARE_VERSION}`,
  });
  return { spec, image, repo, commit, agentsMd, runtimes, inputs, cacheKey: cacheKey(inputs) };
}
