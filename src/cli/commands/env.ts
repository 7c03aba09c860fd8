import type { Command } from 'commander';
import { readFile } from 'node:fs/promises';
import { specFor } from '../../env/lookup.js';
import { prepareEnv } from '../../env/prepare.js';
import { envStatus } from '../../env/status.js';
import { SnapshotStore } from '../../snapshot/store.js';
import { openState } from '../../state/db.js';
import { InputError } from '../../util/errors.js';
import { mib, report, table } from '../output.js';
import { globals } from '../globals.js';
import { remoteEnvLs, remoteEnvPrepare, remoteEnvStatus, remoteOf } from '../remote.js';

export function registerEnv(program: Command): void {
  const env = program.command('env').description('environments: a repository prepared once and snapshotted');

  env.command('prepare')
    .description('clone, install and snapshot an environment (a cache hit when nothing changed)')
    .argument('<spec>', 'environment spec (YAML) or the name of a prepared environment')
    .option('--force', 'build a new snapshot even when a fresh one exists')
    .action(async (nameOrPath: string, opts: { force?: boolean }) => {
      const g = globals(program);
      const remote = await remoteOf(program);
      if (remote) return remoteEnvPrepare(remote, g.json, nameOrPath, !!opts.force);
      const { spec, specPath } = await specFor(nameOrPath);
      const result = await prepareEnv(spec, {
        force: opts.force, quiet: g.json,
        onOutput: g.json ? undefined : (chunk) => process.stderr.write(chunk),
      });
      const state = openState();
      try {
        await state.environments.upsert({ name: spec.name, specPath, specYaml: await readFile(specPath, 'utf8') });
        await state.environments.setCurrentSnapshot(spec.name, result.snapshotId, { agentsMd: result.agentsMd });
      } finally {
        state.close();
      }
      report(g.json, result, () => [
        `${spec.name}: ${result.cacheHit ? 'cache hit,' : 'prepared'} snapshot ${result.snapshotId} ` +
          `(commit ${result.commit.slice(0, 12)})`,
        ...Object.entries(result.timingsMs).map(([phase, ms]) => `  ${phase.padEnd(9)} ${(ms / 1000).toFixed(2)} s`),
        result.sizes ? `  size      ${mib(result.sizes.rawBytes)} raw, ${mib(result.sizes.compressedBytes)} ` +
          `compressed (${result.sizes.ratio.toFixed(1)}x)` : '',
        result.agentsMd ? '  AGENTS.md loaded' : '  no AGENTS.md',
      ].filter(Boolean).join('\n'));
    });

  env.command('status')
    .description('fresh or stale, and when stale, which input changed')
    .argument('<env>', 'environment name or spec file')
    .action(async (nameOrPath: string) => {
      const g = globals(program);
      const remote = await remoteOf(program);
      if (remote) return remoteEnvStatus(remote, g.json, nameOrPath);
      const { spec } = await specFor(nameOrPath);
      const status = await envStatus(spec, await SnapshotStore.open());
      report(g.json, status, () => [`${status.envName}: ${status.state}` +
        (status.snapshotId ? ` (snapshot ${status.snapshotId})` : ''),
      ...status.reasons.map((r) => `  - ${r}`)].join('\n'));
      if (status.state !== 'fresh') process.exitCode = 3;
    });

  env.command('ls')
    .description('list prepared environments')
    .action(async () => {
      const g = globals(program);
      const remote = await remoteOf(program);
      if (remote) return remoteEnvLs(remote, g.json);
      const state = openState();
      try {
        const envs = await state.environments.list();
        report(g.json, envs, () => table(envs.map((e) => ({ ...e, snapshot: e.currentSnapshotId ?? '-',
          updated: e.updatedAt.toISOString() })), ['name', 'snapshot', 'specPath', 'updated']));
      } finally {
        state.close();
      }
    });
}

export function registerSnapshot(program: Command): void {
  const snap = program.command('snapshot').description('the snapshot store');

  snap.command('ls')
    .description('list stored snapshots, newest first')
    .option('--env <name>', 'only this environment')
    .action(async (opts: { env?: string }) => {
      const g = globals(program);
      const list = await (await SnapshotStore.open()).list({ envName: opts.env });
      const rows = list.map((s) => ({ id: s.id, env: s.envName, createdAt: s.createdAt, valid: s.valid,
        invalidReason: s.invalidReason, rawSizeBytes: s.rawSizeBytes, compressedSizeBytes: s.compressedSizeBytes }));
      report(g.json, rows, () => table(rows.map((r) => ({ ...r, raw: mib(r.rawSizeBytes),
        compressed: mib(r.compressedSizeBytes), valid: r.valid ? 'yes' : `no: ${r.invalidReason}` })),
      ['id', 'env', 'createdAt', 'raw', 'compressed', 'valid']));
    });

  snap.command('rm')
    .description('remove snapshots (VMs already restored from them keep running)')
    .argument('<id...>', 'snapshot ids')
    .action(async (ids: string[]) => {
      const g = globals(program);
      const store = await SnapshotStore.open();
      for (const id of ids) await store.get(id);
      for (const id of ids) await store.remove(id);
      report(g.json, { removed: ids }, () => `removed ${ids.join(', ')}`);
    });

  snap.command('gc')
    .description('keep the newest snapshots of each environment, remove the rest')
    .option('--keep <n>', 'snapshots to keep per environment', '3')
    .action(async (opts: { keep: string }) => {
      const g = globals(program);
      if (!/^\d+$/.test(opts.keep)) {
        throw new InputError(`--keep must be a whole number of snapshots (0 or more), got "${opts.keep}"`);
      }
      const result = await (await SnapshotStore.open()).gc({ keepPerEnv: Number(opts.keep) });
      report(g.json, result, () => `removed ${result.removedIds.length} snapshot(s)` +
        (result.removedIds.length ? `: ${result.removedIds.join(', ')}` : '') +
        (result.orphanedCacheIds.length ? `; ${result.orphanedCacheIds.length} orphaned cache dir(s)` : ''));
    });
}
