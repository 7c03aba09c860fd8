import { cp, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import { prewarmHome } from '../util/paths.js';

/** The bundled example, relative to this file in both src/ and dist/. */
export const EXAMPLES_DIR = fileURLToPath(new URL('../../examples/', import.meta.url));

/**
 * Make the bundled example a git repository under PREWARM_HOME (the example ships as plain
 * files inside prewarm's own repository) and write its spec next to it. A change to the
 * example's files becomes a new commit; unchanged files leave the commit as it was, so a
 * second prepare is a cache hit. Returns the spec's path.
 */
export async function materializeExample(name = 'hello-node'): Promise<string> {
  const source = join(EXAMPLES_DIR, name);
  const repo = join(prewarmHome(), 'examples', name);
  await mkdir(repo, { recursive: true });
  const git = (args: string[]) => execa('git', args, { cwd: repo });
  if (!existsSync(join(repo, '.git'))) {
    await git(['init', '--quiet', '--initial-branch=main']);
    await git(['config', 'user.name', 'prewarm']);
    await git(['config', 'user.email', 'prewarm@localhost']);
  }
  for (const entry of await execa('git', ['ls-files'], { cwd: repo }).then((r) => r.stdout.split('\n').filter(Boolean))) {
    await rm(join(repo, entry), { force: true });
  }
  await cp(source, repo, { recursive: true, filter: (src) => !src.includes('node_modules') });
  await git(['add', '-A']);
  const status = await git(['status', '--porcelain']);
  if (status.stdout.trim()) await git(['commit', '--quiet', '-m', `example ${name}`]);

  const specText = (await readFile(join(EXAMPLES_DIR, `${name}.env.yaml`), 'utf8'))
    .replace(/path: \.\/.*$/m, `path: ${repo}`);
  const specPath = join(prewarmHome(), 'examples', `${name}.env.yaml`);
  await writeFile(specPath, specText);
  return specPath;
}
