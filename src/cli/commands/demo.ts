import type { Command } from 'commander';
import { readFile } from 'node:fs/promises';
import { buildImage } from '../../image/build.js';
import { materializeExample } from '../../env/example.js';
import { loadSpec } from '../../env/spec.js';
import { prepareEnv } from '../../env/prepare.js';
import { openState } from '../../state/db.js';
import { submitAndRun } from '../../task/record.js';
import { renderResult } from '../render.js';
import { globals } from '../globals.js';

/** The change the demo's second task makes: a doc comment edit and a new test. */
const CHANGE = [
  "sed -i 's/Whether a list has an odd number of entries./Whether a list has an odd number of " +
    "entries; an empty list is even./' src/index.js",
  "printf '%s\\n' \"'use strict';\" \"const test = require('node:test');\" " +
    "\"const assert = require('node:assert');\" \"const { formatDuration } = require('../src/index.js');\" " +
    "\"test('formats hours', () => assert.strictEqual(formatDuration(3600000), '1h'));\" > test/hours.test.js",
  'npm test',
];

export function registerDemo(program: Command): void {
  program.command('demo')
    .description('the main job on the bundled example: build, prepare, run tasks, show the diff')
    .action(async () => {
      const g = globals(program);
      const out = (s: string) => process.stdout.write(`${s}\n`);
      out('== 1. guest image');
      const image = await buildImage({ quiet: g.json });
      out(`image ${image.digest} ${image.cached ? '(cached)' : 'built'}`);

      out('\n== 2. prepare the example environment (clone, npm ci, snapshot)');
      const specPath = await materializeExample();
      const spec = await loadSpec(specPath);
      const prepared = await prepareEnv(spec, { onOutput: (c) => process.stderr.write(c) });
      const state = openState();
      try {
        const previous = await state.environments.get(spec.name);
        const coldMs = prepared.cacheHit
          ? (previous?.lastInputs as { coldPrepareMs?: number } | null)?.coldPrepareMs ?? null
          : Object.values(prepared.timingsMs).reduce((a, b) => a + b, 0);
        await state.environments.upsert({ name: spec.name, specPath, specYaml: await readFile(specPath, 'utf8'),
          lastInputs: { cacheKey: prepared.cacheKey, coldPrepareMs: coldMs, timingsMs: prepared.cacheHit ? undefined : prepared.timingsMs } });
        await state.environments.setCurrentSnapshot(spec.name, prepared.snapshotId, { agentsMd: prepared.agentsMd });
        out(`snapshot ${prepared.snapshotId}: ${prepared.cacheHit ? 'cache hit (inputs unchanged)' : 'new'}`);
        for (const [phase, ms] of Object.entries(prepared.timingsMs)) out(`  ${phase.padEnd(9)} ${(ms / 1000).toFixed(2)} s`);

        out('\n== 3. task: run the tests');
        const first = await submitAndRun(state, spec, { envName: spec.name, commands: ['npm test'] },
          { onOutput: (c) => process.stdout.write(c) });
        out(renderResult(first!));

        out('\n== 4. task: change a source file, add a test, run the tests again');
        const second = await submitAndRun(state, spec, { envName: spec.name, commands: CHANGE },
          { onOutput: (c) => process.stdout.write(c) });
        out(renderResult(second!));
        out(`\n-- diff --\n${second!.diff?.patch ?? '(none)'}`);

        out('== 5. cold start against restore');
        const restoreMs = second!.timingsMs.restore;
        if (coldMs !== null) {
          out(`  cold prepare (boot, clone, npm ci, snapshot): ${(coldMs / 1000).toFixed(1)} s`);
          out(`  restore to a working guest:                  ${(restoreMs / 1000).toFixed(2)} s ` +
            `(${(coldMs / restoreMs).toFixed(0)}x faster)`);
        } else {
          out(`  restore to a working guest: ${(restoreMs / 1000).toFixed(2)} s (cold prepare not recorded; ` +
            'run `prewarm env prepare --force` to measure it)');
        }
        if (first!.status !== 'succeeded' || second!.status !== 'succeeded') process.exitCode = 2;
      } finally {
        state.close();
      }
    });
}
