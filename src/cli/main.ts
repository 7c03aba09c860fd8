import { Command, Option } from 'commander';
import { InputError } from '../util/errors.js';
import { setLogLevel } from '../util/log.js';
import { printError } from './output.js';
import { globals } from './globals.js';
import { reapLeftovers } from './startup.js';
import { registerImage } from './commands/image.js';
import { registerVm } from './commands/vm.js';
import { registerEnv, registerSnapshot } from './commands/env.js';
import { registerTask } from './commands/task.js';
import { registerDemo } from './commands/demo.js';
import { registerBench } from './commands/bench.js';
import { registerServe } from './commands/serve.js';
import { registerPool, registerUsage } from './commands/pool.js';

/** The commands that have a remote mode; any other refuses --remote rather than act on
 * this host's state while the user meant a service's. */
const REMOTE_COMMANDS = new Set(['env prepare', 'env status', 'env ls', 'task run', 'task ls', 'task show', 'task cancel']);

const program = new Command();
program
  .name('prewarm')
  .description('run coding tasks in microVMs restored from pre-warmed snapshots')
  .option('--json', 'print results as JSON')
  .option('-v, --verbose', 'log every step to stderr')
  .addOption(new Option('--remote <url>', 'talk to a `prewarm serve` at URL (env, task commands); ' +
    'token from PREWARM_TOKEN or --token-file').env('PREWARM_REMOTE'))
  .addOption(new Option('--token-file <file>', 'the service\'s API token file (default: PREWARM_HOME/api-token)')
    .env('PREWARM_TOKEN_FILE'))
  .hook('preAction', async (_program, action) => {
    const g = globals(program);
    setLogLevel(process.env.PREWARM_LOG_LEVEL ?? (g.verbose ? 'debug' : 'error'));
    const name = [action.parent?.name(), action.name()].filter((n) => n && n !== 'prewarm').join(' ');
    if (program.opts().remote && !REMOTE_COMMANDS.has(name)) {
      throw new InputError(`\`prewarm ${name}\` has no remote mode and would act on this host, not on ` +
        `${program.opts().remote}; remote mode covers ${[...REMOTE_COMMANDS].join(', ')} (a service's pools: ` +
        'PUT /v1/pools/ENV, or the SDK\'s setPool). Drop --remote (or unset PREWARM_REMOTE) to run it here.');
    }
    // A remote command runs nothing here, so there is nothing of this host to tidy.
    if (!program.opts().remote) await reapLeftovers();
  });

registerImage(program);
registerVm(program);
registerEnv(program);
registerUsage(program);
registerSnapshot(program);
registerTask(program);
registerDemo(program);
registerBench(program);
registerServe(program);
registerPool(program);

try {
  await program.parseAsync(process.argv);
} catch (err) {
  printError(err, globals(program).json);
  process.exitCode = 1;
}
// Output to a pipe is written asynchronously: exit once it has all been handed over.
await new Promise<void>((resolve) => process.stdout.write('', () => resolve()));
await new Promise<void>((resolve) => process.stderr.write('', () => resolve()));
// A command is done when its action returns. Detached VMs (`vm boot`, `vm restore`) keep
// running; nothing else of this process should, so leftover handles must not hold it open.
process.exit(process.exitCode ?? 0);
