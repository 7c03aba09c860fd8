import { availableParallelism } from 'node:os';
import type { Command } from 'commander';
import { loadSpec, resolveTier, TIERS, type TierName } from '../../env/spec.js';
import { gib } from '../../pool/budget.js';
import { readManager } from '../../pool/manager-file.js';
import { WarmPools, type PoolView } from '../../pool/pool.js';
import { IDLE_VM_CORE_SHARE, POOL_MAX_SIZE } from '../../pool/size.js';
import { HEADROOM, rightSize } from '../../pool/right-size.js';
import { poolsReport } from '../../pool/status.js';
import { openState } from '../../state/db.js';
import { wholeNumber } from '../args.js';
import { globals } from '../globals.js';
import { mib, report, table } from '../output.js';

/** Said when a pool's idle VMs would take a good part of the host's cores. */
function cpuWarning(size: number): string {
  const cores = availableParallelism();
  const share = size * IDLE_VM_CORE_SHARE;
  return share < cores / 4 ? '' : `\nnote: ${size} idle VMs use about ${share.toFixed(1)} of this host's ${cores} ` +
    `cores under TCG (${IDLE_VM_CORE_SHARE * 100}% of a core each), which slows the tasks they serve`;
}

export function registerPool(program: Command): void {
  const pool = program.command('pool').description('warm pools: VMs kept restored, ready to take a task');

  pool.command('set')
    .description('keep N VMs of an environment restored (0 removes the pool)')
    .argument('<env>', 'environment name')
    .requiredOption('--size <n>', 'VMs to keep ready')
    .action(async (envName: string, opts: { size: string }) => {
      const g = globals(program);
      const size = wholeNumber('--size', opts.size, 0, POOL_MAX_SIZE);
      const state = openState();
      try {
        const target = size === 0 ? (await state.pools.remove(envName), { envName, targetSize: 0 })
          : await state.pools.set(envName, size);
        const manager = await readManager();
        const keeper = size === 0 ? (manager ? `process ${manager.pid} destroys its VMs` : 'it holds no VMs')
          : manager ? `process ${manager.pid} keeps it filled`
            : 'no process keeps pools filled now: run `prewarm pool run` (or `prewarm serve`)';
        report(g.json, { ...target, managerPid: manager?.pid ?? null }, () =>
          `${envName}: ${size === 0 ? 'pool removed' : `pool of ${size}`}; ${keeper}${cpuWarning(size)}`);
      } finally {
        state.close();
      }
    });

  pool.command('ls')
    .description('each pool: target, ready, filling, host memory of its VMs; and the memory budget')
    .action(async () => {
      const g = globals(program);
      const state = openState();
      try {
        const r = await poolsReport(state);
        report(g.json, r, () => [
          table(r.pools.map((p) => ({ ...p, env: p.envName, target: p.targetSize,
            snapshot: p.snapshotIds.join(',') || '-', hostMemory: `${mib(p.hostPssBytes)} (rss ${mib(p.hostRssBytes)})` })),
          ['env', 'target', 'ready', 'filling', 'snapshot', 'hostMemory']),
          r.manager ? `kept filled by process ${r.manager.pid} since ${r.manager.startedAt}`
            : 'no process keeps the pools filled (run `prewarm pool run` or `prewarm serve`)',
          `memory budget: ${gib(r.budget.usedBytes)} of ${gib(r.budget.budgetBytes)} used by ${r.budget.vms} VM(s), ` +
            `${gib(Math.max(0, r.budget.freeBytes))} free (${r.budget.source}; overcommit ${r.budget.overcommit})`,
        ].join('\n'));
      } finally {
        state.close();
      }
    });

  pool.command('run')
    .description('keep the pools filled in the foreground until stopped (SIGINT/SIGTERM destroy its VMs)')
    .action(async () => {
      const g = globals(program);
      await runPools((line) => process.stdout.write(`${line}\n`), g.json);
    });
}

/** `prewarm pool run`: start the pools, print each change, stop on SIGINT or SIGTERM. */
export async function runPools(print: (line: string) => void, json = false): Promise<void> {
  const state = openState();
  try {
    const pools = await WarmPools.start({ state });
    let last = '';
    const show = () => {
      const views = pools.list();
      // A line when counts, snapshot or reason change; not for every move of host memory.
      const key = JSON.stringify(views.map((v) => [v.envName, v.targetSize, v.ready, v.filling, v.snapshotId, v.blocked]));
      if (key === last) return;
      last = key;
      print(json ? JSON.stringify(views) : views.map(describe).join('; ') || 'no pools set');
    };
    pools.onChange(show);
    show();
    await new Promise<void>((resolve) => {
      // process.on, not once: execa's exit hook re-raises a signal that it finds no other
      // listener for, and a once-listener is removed before that hook looks.
      const stop = () => void pools.stop().finally(() => {
        process.off('SIGINT', stop);
        process.off('SIGTERM', stop);
        resolve();
      });
      process.on('SIGINT', stop);
      process.on('SIGTERM', stop);
    });
  } finally {
    state.close();
  }
}

function describe(p: PoolView): string {
  return `${p.envName}: ${p.ready}/${p.targetSize} ready, ${p.filling} filling, ${mib(p.hostPssBytes)}` +
    (p.snapshotId ? ` (${p.snapshotId})` : '') + (p.blocked ? ` - ${p.blocked}` : '');
}

/** `prewarm env usage NAME`: peaks of recent tasks and the tier that would have held them. */
export function registerUsage(program: Command): void {
  const env = program.commands.find((c) => c.name() === 'env') ?? program.command('env');
  env.command('usage')
    .description('peak memory of recent tasks, and the smallest tier that holds it with headroom')
    .argument('<env>', 'environment name')
    .option('--last <n>', 'tasks to look at', '50')
    .action(async (envName: string, opts: { last: string }) => {
      const g = globals(program);
      const state = openState();
      try {
        const usage = rightSize(envName, await state.tasks.peaks(envName, Math.max(1, wholeNumber('--last', opts.last, 0, 999_999_999))));
        const env = await state.environments.get(envName);
        const tier = env ? resolveTier((await loadSpec(env.specPath).catch(() => null))?.tier ?? 'small') : null;
        const name = (t: TierName | null) => (t ? `${t} (${TIERS[t].memoryMiB} MiB)` : 'none of the tiers');
        report(g.json, { ...usage, currentTierMemoryMiB: tier?.memoryMiB ?? null }, () => usage.count === 0
          ? `${envName}: no finished task recorded a peak yet`
          : [
            `${envName}: ${usage.count} recent task(s) with a recorded peak`,
            `  p50 ${mib(usage.p50Bytes)}, p95 ${mib(usage.p95Bytes)}, max ${mib(usage.maxBytes)}; ` +
              `OOM kills: ${usage.oomKills}`,
            `  smallest tier with ${HEADROOM * 100}% headroom: ${name(usage.tierForP95)} for p95, ` +
              `${name(usage.tierForMax)} for max` + (tier ? `; now ${tier.memoryMiB} MiB` : ''),
            usage.oomKills > 0 ? '  OOM-killed tasks stopped at their limit: they needed more than their peak shows' : '',
          ].filter(Boolean).join('\n'));
      } finally {
        state.close();
      }
    });
}
