import { randomBytes } from 'node:crypto';
import { createReadStream, existsSync, readdirSync } from 'node:fs';
import { cp, mkdir, mkdtemp, open, readFile, rm, stat, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, afterEach, beforeAll, describe, expect, it, onTestFailed } from 'vitest';
import { isAlive } from '../../src/engine/proc.js';
import { reapVms } from '../../src/engine/reaper.js';
import { prepareEnv } from '../../src/env/prepare.js';
import { loadSpec } from '../../src/env/spec.js';
import { envStatus } from '../../src/env/status.js';
import { SnapshotStore } from '../../src/snapshot/store.js';
import { restoreReady } from '../../src/task/acquire.js';
import { runTask } from '../../src/task/run.js';
import { paths } from '../../src/util/paths.js';
import { preparedExample } from './example-env.js';
import { TINY_TIER, commitFiles, makeRepo, vmDirsOwnedBy, writeSpec } from './tiny-env.js';

/**
 * Issue 3, "Must show": environments prepared in real VMs. The bundled example is prepared
 * once (shared with other files: a cache hit when they already made it); everything else
 * uses tiny repositories whose setup installs nothing, so each prepare is a boot and a
 * snapshot. Snapshots of this file's own environments are removed at the end.
 */

const MINUTE = 60_000;
const OWN_ENVS = ['lockfile-env', 'secret-env', 'killed-env', 'failing-env', 'ref-env', 'twin-env', 'node22-env'];

let work: string;
let store: SnapshotStore;
/** VMs of runTask calls, to show on failure and to check they are gone. */
const taskVms: string[] = [];

async function removeOwnSnapshots(): Promise<void> {
  const s = await SnapshotStore.open();
  for (const snap of await s.list()) {
    if (OWN_ENVS.includes(snap.envName)) await s.remove(snap.id);
  }
}

function tinyFields(name: string, repo: string, extra: Record<string, unknown> = {}) {
  return { name, repository: { path: repo }, setup: 'true', tier: TINY_TIER, network: { setup: false }, ...extra };
}

/** Every place `needles` occur in `file`, read in large chunks. */
async function findNeedles(file: string, needles: Buffer[]): Promise<{ needle: string; offset: number }[]> {
  const overlap = Math.max(...needles.map((n) => n.length)) - 1;
  const hits = new Map<string, { needle: string; offset: number }>();
  let carry = Buffer.alloc(0);
  let base = 0;
  for await (const chunk of createReadStream(file, { highWaterMark: 16 << 20 }) as AsyncIterable<Buffer>) {
    const buf = carry.length > 0 ? Buffer.concat([carry, chunk]) : chunk;
    for (const needle of needles) {
      for (let i = buf.indexOf(needle); i !== -1; i = buf.indexOf(needle, i + 1)) {
        hits.set(`${needle.toString('hex')}@${base + i}`, { needle: needle.toString('latin1'), offset: base + i });
      }
    }
    const keep = Math.min(overlap, buf.length);
    carry = Buffer.from(buf.subarray(buf.length - keep));
    base += buf.length - keep;
  }
  return [...hits.values()];
}

/** The canary as the guest might hold it: as is, its random part, UTF-16, and base64 at each
 * of the three alignments (the groups that also hold neighbouring bytes are cut off). */
function canaryForms(canary: string, random: string): Buffer[] {
  const forms = [Buffer.from(canary), Buffer.from(random), Buffer.from(canary, 'utf16le')];
  for (let k = 0; k < 3; k++) {
    const b64 = Buffer.concat([Buffer.alloc(k, 0x20), Buffer.from(canary)]).toString('base64');
    forms.push(Buffer.from(b64.slice(k === 0 ? 0 : 4, -4)));
  }
  return forms;
}

describe('env prepare (real QEMU)', () => {
  beforeAll(async () => {
    await mkdir(paths.tmp(), { recursive: true });
    work = await mkdtemp(join(paths.tmp(), 'test-env-prepare-'));
    store = await SnapshotStore.open();
    await removeOwnSnapshots();
  });

  afterEach(() => onTestFailed(() => console.error('task VMs of the failed test:', taskVms)));
  afterEach(() => {
    // Prepare and task VMs are destroyed by the code under test, pass or fail.
    expect(vmDirsOwnedBy(process.pid)).toEqual([]);
    for (const id of taskVms.splice(0)) expect(existsSync(join(paths.vms(), id)), id).toBe(false);
  });
  afterAll(async () => {
    await removeOwnSnapshots();
    if (work) await rm(work, { recursive: true, force: true });
  });

  it('prepares the example from a local path; a restore has node_modules and passes npm test', async () => {
    const example = await preparedExample();
    const snap = await store.get(example.snapshotId);
    expect(snap.valid).toBe(true);
    expect(snap.envName).toBe('hello-node');
    const inputs = snap.manifest.inputs as { repository: string; lockfiles: Record<string, string> };
    expect(inputs.repository).toBe(example.repoDir);
    expect(Object.keys(inputs.lockfiles)).toEqual(['package-lock.json']);
    expect(snap.manifest.agentsMd).toMatch(/^# hello-node/);

    let output = '';
    const result = await runTask(example.spec, {
      envName: example.spec.name, noRebuild: true,
      commands: ['test -d node_modules', 'test -f node_modules/ms/package.json && test -f node_modules/is-odd/package.json', 'npm test'],
    }, { onOutput: (chunk) => { output += chunk.toString(); }, onVm: (id) => taskVms.push(id) });

    expect(result.status, `${result.message}\n${output}`).toBe('succeeded');
    expect(result.snapshotId).toBe(example.snapshotId);
    expect(result.commands.map((c) => c.exitCode)).toEqual([0, 0, 0]);
    expect(output).toMatch(/# pass [1-9]/);
    expect(output).toMatch(/# fail 0/);
    expect(result.diff?.stats.filesChanged).toBe(0);
  }, 20 * MINUTE);

  it('a second prepare is a cache hit; a changed lockfile makes the status stale and prepare rebuilds', async () => {
    const example = await preparedExample();
    const again = await prepareEnv(example.spec, { quiet: true });
    expect(again.cacheHit).toBe(true);
    expect(again.snapshotId).toBe(example.snapshotId);
    expect(again.sizes).toBeNull();
    expect((await envStatus(example.spec, store)).state).toBe('fresh');

    // A copy of its own: the shared example stays as it is.
    const repo = join(work, 'lockfile-repo');
    await makeRepo(repo, { 'README.md': 'lockfile test\n', 'yarn.lock': '# yarn lockfile v1\n' });
    const spec = await writeSpec(join(work, 'lockfile-env.yaml'), tinyFields('lockfile-env', repo));
    expect((await envStatus(spec, store)).state).toBe('missing');

    const first = await prepareEnv(spec, { quiet: true });
    expect(first.cacheHit).toBe(false);
    expect(first.sizes!.compressedBytes).toBeGreaterThan(0);
    const second = await prepareEnv(spec, { quiet: true });
    expect(second).toMatchObject({ cacheHit: true, snapshotId: first.snapshotId });
    expect(await envStatus(spec, store)).toMatchObject({ state: 'fresh', snapshotId: first.snapshotId, reasons: [] });

    await commitFiles(repo, { 'yarn.lock': '# yarn lockfile v1\n\nleft-pad@^1.3.0:\n  version "1.3.0"\n' }, 'bump the lockfile');
    const stale = await envStatus(spec, store);
    expect(stale.state).toBe('stale');
    expect(stale.reasons).toContain('lockfile yarn.lock changed');
    expect(stale.newestSnapshotId).toBe(first.snapshotId);

    const rebuilt = await prepareEnv(spec, { quiet: true });
    expect(rebuilt.cacheHit).toBe(false);
    expect(rebuilt.snapshotId).not.toBe(first.snapshotId);
    expect(rebuilt.cacheKey).not.toBe(first.cacheKey);
    expect(await envStatus(spec, store)).toMatchObject({ state: 'fresh', snapshotId: rebuilt.snapshotId });
    // The old snapshot is kept (until gc), still valid, just not fresh.
    expect((await store.list({ envName: 'lockfile-env' })).map((s) => s.id)).toEqual([rebuilt.snapshotId, first.snapshotId]);
  }, 30 * MINUTE);

  it('two prepares of one environment at once, in two processes: one builds, the other waits and takes its snapshot', async () => {
    const repo = join(work, 'twin-repo');
    await makeRepo(repo, { 'README.md': 'twin test\n' });
    const specFile = join(work, 'twin-env.yaml');
    const spec = await writeSpec(specFile, tinyFields('twin-env', repo, { setup: 'sleep 5' }));

    const child = execa('npx', ['tsx', 'test/vm/fixtures/prepare-env.ts', specFile], { reject: false });
    const lock = join(paths.locks(), 'prepare-twin-env');
    for (let i = 0; i < 1200 && !existsSync(lock) && child.exitCode === null; i++) await new Promise((r) => setTimeout(r, 100));
    expect(existsSync(lock), 'the other process took the prepare lock').toBe(true);

    const mine = await prepareEnv(spec, { quiet: true });
    const theirs = await child;
    const done = theirs.stdout.split('\n').filter(Boolean).map((l) => JSON.parse(l) as { done?: string }).find((e) => e.done);
    expect(done?.done, theirs.stderr).toMatch(/^snap-/);
    expect(mine).toMatchObject({ cacheHit: true, snapshotId: done!.done });
    expect((await store.list({ envName: 'twin-env' })).map((s) => s.id)).toEqual([done!.done]);
    expect(existsSync(lock)).toBe(false);
  }, 20 * MINUTE);

  it('installs the Node.js release that .nvmrc asks for; setup and tasks run on it with a matching npm', async () => {
    const repo = join(work, 'node22-repo');
    await makeRepo(repo, { '.nvmrc': '22\n', 'README.md': 'node runtime test\n' });
    // The setup writes what it ran on into an ignored file, so the task can read it back.
    const spec = await writeSpec(join(work, 'node22-env.yaml'), tinyFields('node22-env', repo, {
      setup: 'mkdir -p .seen && echo "setup $(node --version)" > .seen/setup.txt && echo ".seen/" >> .git/info/exclude',
      network: { setup: true },
    }));
    const prepared = await prepareEnv(spec, { quiet: true });
    expect(prepared.cacheHit).toBe(false);
    const inputs = (await store.get(prepared.snapshotId)).manifest.inputs as { runtimes?: Record<string, string> };
    expect(JSON.stringify(inputs.runtimes)).toMatch(/22\.\d+\.\d+/);

    let output = '';
    const result = await runTask(spec, {
      envName: spec.name, noRebuild: true,
      commands: ['cat .seen/setup.txt && node --version && npm --version && npm exec -- node -p process.version'],
    }, { onOutput: (chunk) => { output += chunk.toString(); }, onVm: (id) => taskVms.push(id) });
    expect(result.status, `${result.message}\n${output}`).toBe('succeeded');
    const lines = output.trim().split('\n');
    expect(lines[0]).toMatch(/^setup v22\.\d+\.\d+$/);
    expect(lines[1]).toBe(lines[0].replace('setup ', ''));
    // npm 10 or 11: what this node release supports (npmMajorFor), not Debian's npm 9.
    expect(lines[2]).toMatch(/^1[01]\.\d+\.\d+$/);
    expect(lines[3]).toBe(lines[1]);
    expect(result.diff?.stats.filesChanged).toBe(0);
  }, 30 * MINUTE);

  it('a secret given to the setup script is in neither the memory nor the disk of the snapshot', async () => {
    const random = randomBytes(16).toString('hex');
    const canary = `canary-${random}`;
    process.env.PREWARM_TEST_CANARY = canary;
    const repo = join(work, 'secret-repo');
    await makeRepo(repo, { 'README.md': 'secret test\n' });
    const spec = await writeSpec(join(work, 'secret-env.yaml'), tinyFields('secret-env', repo, {
      // The setup fails unless it got the secret, and pushes it through a pipe.
      setup: 'test -n "$CANARY" && printf "%s" "$CANARY" | wc -c > /dev/null && echo using it >/dev/null',
      secrets: { CANARY: '${PREWARM_TEST_CANARY}' },
    }));

    let setupOutput = '';
    const result = await prepareEnv(spec, { quiet: true, force: true, onOutput: (c) => { setupOutput += c.toString(); } });
    expect(result.cacheHit).toBe(false);
    expect(setupOutput).not.toContain(random);
    const snap = await store.get(result.snapshotId);
    const needles = canaryForms(canary, random);

    const found: Record<string, { needle: string; offset: number }[]> = {};
    const out = join(work, 'decompressed');
    await mkdir(out, { recursive: true });
    for (const name of ['memory.raw', 'disk.qcow2', 'state.bin'] as const) {
      const file = join(out, name);
      await execa('zstd', ['-d', '-q', '-f', join(snap.dir, `${name}.zst`), '-o', file]);
      expect((await stat(file)).size).toBe(snap.manifest.files[name].raw.sizeBytes);
      found[name] = await findNeedles(file, needles);
      await rm(file);
    }
    expect(found).toEqual({ 'memory.raw': [], 'disk.qcow2': [], 'state.bin': [] });

    // Nor in any other file of the snapshot: manifests, hash caches, the local copy.
    const grep = await execa('grep', ['-rlaF', '-e', random, snap.dir, join(store.cacheDir, snap.id)], { reject: false });
    expect(grep.stdout).toBe('');
    expect(grep.exitCode).toBe(1);
    expect(JSON.stringify(snap.manifest)).not.toContain(random);
    // The secret is no input: the snapshot does not depend on it.
    expect(JSON.stringify(snap.manifest.inputs)).not.toContain('CANARY');
    delete process.env.PREWARM_TEST_CANARY;
  }, 20 * MINUTE);

  it('a prepare killed during its setup leaves no snapshot, and the reapers leave nothing behind', async () => {
    const repo = join(work, 'killed-repo');
    await makeRepo(repo, { 'README.md': 'killed test\n' });
    const specFile = join(work, 'killed-env.yaml');
    await writeSpec(specFile, tinyFields('killed-env', repo, { setup: 'echo setup-started; sleep 30' }));
    const before = (await store.list()).map((s) => s.id);

    const child = execa('npx', ['tsx', 'test/vm/fixtures/prepare-env.ts', specFile], { reject: false });
    let pid = 0;
    let log = '';
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`setup never started; fixture said:\n${log}`)), 10 * MINUTE);
      child.stdout!.on('data', (chunk: Buffer) => {
        log += chunk.toString();
        for (const line of log.split('\n').filter(Boolean)) {
          const event = JSON.parse(line) as { pid?: number; output?: string };
          if (event.pid) pid = event.pid;
          if (event.output?.includes('setup-started')) { clearTimeout(timer); resolve(); }
        }
      });
      child.on('exit', () => { clearTimeout(timer); reject(new Error(`fixture exited early:\n${log}\n${child.stderr}`)); });
    });
    const vmIds = vmDirsOwnedBy(pid);
    expect(vmIds).toHaveLength(1);
    const record = JSON.parse(await readFile(join(paths.vms(), vmIds[0], 'vm.json'), 'utf8')) as { qemuPid: number };

    process.kill(pid, 'SIGKILL');
    child.kill('SIGKILL');
    await child;
    // QEMU dies with its owner.
    for (let i = 0; i < 200 && isAlive(record.qemuPid); i++) await new Promise((r) => setTimeout(r, 50));
    expect(isAlive(record.qemuPid)).toBe(false);

    expect(await reapVms()).toContain(vmIds[0]);
    const reopened = await SnapshotStore.open();
    expect((await reopened.list()).map((s) => s.id)).toEqual(before);
    expect(await reopened.list({ envName: 'killed-env' })).toEqual([]);
    expect(existsSync(join(paths.vms(), vmIds[0]))).toBe(false);
    const leftovers = [paths.tmp(), reopened.rootDir, reopened.cacheDir]
      .flatMap((dir) => readdirSync(dir).map((name) => join(dir, name)))
      .filter((path) => path.includes(`-${pid}-`) || path.includes('killed-env'));
    expect(leftovers).toEqual([]);
  }, 20 * MINUTE);

  it('refuses a snapshot with one byte flipped or a file truncated before any VM starts', async () => {
    // Damage copies in a store of its own: the shared snapshots stay good.
    const example = await preparedExample();
    const source = await store.get(example.snapshotId);
    const damage = async (label: string, hurt: (dir: string) => Promise<void>) => {
      const root = join(work, `store-${label}`);
      await cp(source.dir, join(root, source.id), { recursive: true });
      await hurt(join(root, source.id));
      const damaged = await SnapshotStore.open(root, join(work, `cache-${label}`));
      const err = await damaged.materialize(source.id).then(() => null, (e: unknown) => e);
      // The same refusal through the task path: no VM is made.
      await expect(restoreReady(example.spec, source.id, damaged)).rejects.toThrow();
      expect(vmDirsOwnedBy(process.pid)).toEqual([]);
      expect(existsSync(join(damaged.cacheDir, source.id))).toBe(false);
      return { err: err as { code?: string; message: string } | null, after: await damaged.get(source.id) };
    };

    const flipped = await damage('flip', async (dir) => {
      const file = join(dir, 'memory.raw.zst');
      const offset = Math.floor((await stat(file)).size / 2);
      const handle = await open(file, 'r+');
      try {
        const byte = Buffer.alloc(1);
        await handle.read(byte, 0, 1, offset);
        byte[0] ^= 0x01;
        await handle.write(byte, 0, 1, offset);
      } finally {
        await handle.close();
      }
    });
    expect(flipped.err).toMatchObject({ code: 'SNAPSHOT_CORRUPT' });
    expect(flipped.err!.message).toContain('memory.raw.zst');
    expect(flipped.after.valid).toBe(false);

    const truncated = await damage('truncate', async (dir) => {
      const file = join(dir, 'disk.qcow2.zst');
      await truncate(file, Math.floor((await stat(file)).size / 2));
    });
    expect(truncated.err).toMatchObject({ code: 'SNAPSHOT_TRUNCATED' });
    expect(truncated.err!.message).toContain('disk.qcow2.zst');
    expect(truncated.after.valid).toBe(false);

    // The original is untouched and still restorable.
    expect((await store.get(example.snapshotId)).valid).toBe(true);
  }, 20 * MINUTE);

  describe('bad input, each a clear error', () => {
    it('an unreachable repository: a path that does not exist, a URL nobody answers', async () => {
      const missing = join(work, 'no-such-repo');
      const byPath = await writeSpec(join(work, 'missing-path.yaml'), tinyFields('ref-env', missing));
      await expect(prepareEnv(byPath, { quiet: true })).rejects.toMatchObject({
        code: 'REPO_UNREACHABLE', message: expect.stringContaining(`cannot reach repository ${missing}`),
      });

      const url = 'http://127.0.0.1:9/x.git';
      const byUrl = await writeSpec(join(work, 'bad-url.yaml'), {
        ...tinyFields('ref-env', ''), repository: { url },
      });
      await expect(prepareEnv(byUrl, { quiet: true })).rejects.toMatchObject({
        code: 'REPO_UNREACHABLE', message: expect.stringContaining(`cannot reach repository ${url}`),
      });
    });

    it('a missing ref', async () => {
      const repo = join(work, 'ref-repo');
      await makeRepo(repo, { 'README.md': 'ref test\n' });
      const spec = await writeSpec(join(work, 'missing-ref.yaml'),
        tinyFields('ref-env', repo, { repository: { path: repo, ref: 'no-such-branch' } }));
      await expect(prepareEnv(spec, { quiet: true })).rejects.toMatchObject({
        code: 'REF_NOT_FOUND', message: expect.stringMatching(/ref "no-such-branch" was not found in repository .*ref-repo/),
      });
    });

    it('a spec with a wrong field names the field', async () => {
      const file = join(work, 'wrong-field.yaml');
      await writeFile(file, 'name: wrong\nrepository: {path: .}\nsetup: "true"\ntier: {memoryMiB: lots, vcpus: 2, diskGiB: 8}\n');
      await expect(loadSpec(file)).rejects.toMatchObject({
        code: 'BAD_INPUT', message: `${file}: tier.memoryMiB: expected a number, got a string`,
      });
      await writeFile(file, 'name: wrong\nrepository: {path: .}\nsetpu: "true"\ntier: small\n');
      await expect(loadSpec(file)).rejects.toThrow(new RegExp(`${file}: setup: is required\\n${file}: setpu: unknown key`));
    });

    it('a failing setup script: its exit code and output tail, and no snapshot', async () => {
      const repo = join(work, 'failing-repo');
      await makeRepo(repo, { 'README.md': 'failing test\n' });
      const spec = await writeSpec(join(work, 'failing-env.yaml'),
        tinyFields('failing-env', repo, { setup: 'echo "installing things"; echo "something broke" >&2; exit 3' }));
      const err = await prepareEnv(spec, { quiet: true }).then(() => null, (e: unknown) => e as { code: string; message: string });
      expect(err).toMatchObject({ code: 'SETUP_FAILED' });
      expect(err!.message).toMatch(/the setup script failed with exit code 3 in VM vm-\w+; no snapshot was stored/);
      expect(err!.message).toMatch(/Last output:\ninstalling things\nsomething broke$/);
      expect(await store.list({ envName: 'failing-env' })).toEqual([]);
    }, 20 * MINUTE);
  });
});
