import type { Command } from 'commander';
import { join, resolve } from 'node:path';
import { runBench, type BenchReport } from '../../bench/run.js';
import { runVmBench } from '../../bench/vm.js';
import { prewarmHome } from '../../util/paths.js';
import { InputError } from '../../util/errors.js';
import { mib, report } from '../output.js';
import { globals } from '../globals.js';

const sec = (ms: number) => `${(ms / 1000).toFixed(2)} s`;

export function renderBench(r: BenchReport): string {
  const lines = [
    `prewarm bench — ${r.startedAt}, ${r.accel.toUpperCase()}, ${r.machine.cpuModel} × ${r.machine.cores}, ` +
      `${mib(r.machine.memoryBytes)}, QEMU ${r.machine.qemu}, env ${r.env}`,
    '',
    'latency                                  p50        p95        n',
    ...Object.values(r.series).map((s) =>
      `  ${s.name.padEnd(38)} ${sec(s.p50).padStart(8)}   ${sec(s.p95).padStart(8)}   ${String(s.samples.length).padStart(3)}`),
    '',
    `cold start (boot + clone + setup): ${sec(r.prepare.coldStartMs)}  ` +
      `[${Object.entries(r.prepare.timingsMs).map(([k, v]) => `${k} ${sec(v)}`).join(', ')}]`,
    `snapshot: create ${sec(r.snapshot.createMs)}, ${mib(r.snapshot.rawBytes)} raw, ` +
      `${mib(r.snapshot.compressedBytes)} compressed (${r.snapshot.ratio.toFixed(1)}x); restore from store ` +
      `${sec(r.snapshot.restoreFromStoreMs)}, from local cache ${sec(r.snapshot.restoreFromCacheMs)}`,
    `memory: tier ${mib(r.memory.tierBytes)}, guest uses ${mib(r.memory.guestUsedBytes)}, idle clone RSS ` +
      `${mib(r.memory.idleCloneRssBytes)} (PSS ${mib(r.memory.idleClonePssBytes)}); host memory for 1 clone ` +
      `${mib(r.memory.oneCloneHostBytes)}, for ${r.memory.clones} clones ${mib(r.memory.tenClonesHostBytes)}`,
    `  where it is (PSS; private): guest RAM of 1 clone ${mib(r.memory.split.oneClone.guestRamPssBytes)}; ` +
      `${mib(r.memory.split.oneClone.guestRamPrivateBytes)}, QEMU itself ${mib(r.memory.split.oneClone.vmmPssBytes)}; ` +
      `${mib(r.memory.split.oneClone.vmmPrivateBytes)}; all ${r.memory.clones}: guest RAM ` +
      `${mib(r.memory.split.allClones.guestRamPssBytes)}; ${mib(r.memory.split.allClones.guestRamPrivateBytes)}, ` +
      `QEMU ${mib(r.memory.split.allClones.vmmPssBytes)}; ${mib(r.memory.split.allClones.vmmPrivateBytes)}`,
    `density: ${r.density.clonesInBudget} idle clones in a ${mib(r.density.budgetBytes)} budget ` +
      `(${mib(r.density.perCloneBytes)} each after the first)`,
    '',
    'ratios',
    `  cold start / restore to first command: ${r.ratios.coldStartOverRestoreToFirstCommand.toFixed(1)}x`,
    `  loadvm / restore to first command:     ${r.ratios.loadvmOverRestoreToFirstCommand.toFixed(1)}x`,
    `  ${r.memory.clones} clones / 1 clone host memory:      ${r.ratios.clonesMemoryOverOne.toFixed(2)}x`,
    ...(r.ratios.restoreToFirstCommandOverPool
      ? [`  restore / pool hand-out:                ${r.ratios.restoreToFirstCommandOverPool.toFixed(1)}x`] : []),
    ...(r.api && r.ratios.apiOverLibrary
      ? [`  API / library, submit to first command: ${r.ratios.apiOverLibrary.toFixed(2)}x ` +
        `(API overhead ${sec(r.api.overheadP50Ms)} at p50)`] : []),
  ];
  return lines.join('\n');
}

export function registerBench(program: Command): void {
  const bench = program.command('bench').description('benchmarks: `bench run` (the whole story) and `bench vm` (the engine alone)');

  bench.command('vm')
    .description('cold boot, snapshot and restore of the base image, over N rounds')
    .option('--rounds <n>', 'rounds', '20')
    .action(async (opts: { rounds: string }) => {
      const g = globals(program);
      const rounds = Number(opts.rounds);
      if (!(Number.isInteger(rounds) && rounds > 0)) {
        throw new InputError(`--rounds must be a positive whole number, got "${opts.rounds}"`);
      }
      const r = await runVmBench(rounds, (line) => process.stderr.write(`bench vm: ${line}\n`));
      const avg = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
      report(g.json, r, () => [
        `prewarm bench vm — ${r.startedAt}, ${r.accel.toUpperCase()}, ${r.machine.cpuModel} × ${r.machine.cores}, ` +
          `QEMU ${r.machine.qemu}, ${r.memoryMiB} MiB guest, ${r.rounds} rounds`,
        ...Object.values(r.series).map((s) =>
          `  ${s.name.padEnd(34)} p50 ${sec(s.p50).padStart(8)}   p95 ${sec(s.p95).padStart(8)}`),
        `  snapshot size: device state ${(avg(r.stateBytes) / 1024).toFixed(0)} KiB, memory file ` +
          `${mib(avg(r.memoryAllocatedBytes))} allocated of ${r.memoryMiB} MiB`,
      ].join('\n'));
    });

  bench.command('run', { isDefault: true })
    .description('measure cold start, restore, loadvm, snapshot size, memory and density in one run')
    .option('--quick', 'fewer rounds (about five minutes under TCG)')
    .option('--rounds <n>', 'restore rounds (default 20, quick 8)')
    .option('--out <file>', 'JSON report (an SVG chart is written next to it)')
    .action(async (opts: { quick?: boolean; rounds?: string; out?: string }) => {
      const g = globals(program);
      const rounds = opts.rounds === undefined ? undefined : Number(opts.rounds);
      if (rounds !== undefined && !(Number.isInteger(rounds) && rounds > 0)) {
        throw new InputError(`--rounds must be a positive whole number, got "${opts.rounds}"`);
      }
      const jsonPath = resolve(opts.out ?? join(prewarmHome(), 'bench', `bench-${Date.now()}.json`));
      const result = await runBench({
        quick: opts.quick, rounds, jsonPath, say: (line) => process.stderr.write(`bench: ${line}\n`),
      });
      report(g.json, result, () => `${renderBench(result)}\n\nraw samples: ${jsonPath}\nchart: ${jsonPath.replace(/\.json$/, '.svg')}`);
    });
}
