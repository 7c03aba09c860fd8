import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { execa } from 'execa';
import { stringify } from 'yaml';
import { loadSpec, type EnvSpec } from '../../src/env/spec.js';
import { paths } from '../../src/util/paths.js';

/** Small environments for real-VM tests: a git repository with a file or two and a setup
 * that installs nothing, so a prepare costs a boot and a snapshot, not an `npm ci`. */

export const TINY_TIER = { memoryMiB: 768, vcpus: 2, diskGiB: 8 };

/** Make `dir` a git repository holding `files`, committed; returns the commit. Fixed dates
 * make the same files the same commit. */
export async function makeRepo(dir: string, files: Record<string, string>): Promise<string> {
  await mkdir(dir, { recursive: true });
  if (!existsSync(join(dir, '.git'))) {
    await git(dir, ['init', '--quiet', '--initial-branch=main']);
  }
  return commitFiles(dir, files, 'initial');
}

export async function commitFiles(dir: string, files: Record<string, string>, message: string): Promise<string> {
  for (const [name, text] of Object.entries(files)) {
    await mkdir(dirname(join(dir, name)), { recursive: true });
    await writeFile(join(dir, name), text);
  }
  await git(dir, ['add', '-A']);
  await git(dir, ['commit', '--quiet', '--allow-empty', '-m', message]);
  return (await git(dir, ['rev-parse', 'HEAD'])).stdout.trim();
}

export function git(dir: string, args: string[]) {
  return execa('git', args, {
    cwd: dir,
    env: {
      GIT_AUTHOR_NAME: 'test', GIT_AUTHOR_EMAIL: 'test@localhost',
      GIT_COMMITTER_NAME: 'test', GIT_COMMITTER_EMAIL: 'test@localhost',
      GIT_AUTHOR_DATE: '2024-01-01T00:00:00Z', GIT_COMMITTER_DATE: '2024-01-01T00:00:00Z',
    },
  });
}

/** Write a spec file for `fields` (a repository path is made absolute) and load it. */
export async function writeSpec(file: string, fields: Record<string, unknown>): Promise<EnvSpec> {
  await mkdir(dirname(file), { recursive: true });
  await writeFile(file, stringify(fields));
  return loadSpec(file);
}

/** VM directories under PREWARM_HOME/vms whose owner is process `pid` (others' tests may run
 * VMs in the same home at the same time: only ours are checked). */
export function vmDirsOwnedBy(pid: number): string[] {
  if (!existsSync(paths.vms())) return [];
  return readdirSync(paths.vms()).filter((id) => {
    try {
      const record = JSON.parse(readFileSync(join(paths.vms(), id, 'vm.json'), 'utf8')) as { owner?: { pid: number } | null };
      return record.owner?.pid === pid;
    } catch {
      return false;
    }
  });
}
