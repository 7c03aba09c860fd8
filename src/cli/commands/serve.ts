import { Option, type Command } from 'commander';
import { DEFAULTS, startService } from '../../api/service.js';
import { logger, setLogLevel } from '../../util/log.js';
import { wholeNumber } from '../args.js';
import { globals } from '../globals.js';
import { claimService } from '../service-file.js';

function whole(flag: string, min: number, max = 1_000_000) {
  return (value: string): number => wholeNumber(flag, value, min, max);
}

const LOOPBACK = new Set(['127.0.0.1', '::1', 'localhost']);

export function registerServe(program: Command): void {
  program.command('serve')
    .description('run the HTTP API: environments, a task queue that survives restarts, live logs, metrics')
    .addOption(new Option('--host <addr>', 'address to listen on').default(DEFAULTS.host).env('PREWARM_API_HOST'))
    .addOption(new Option('--port <n>', 'port to listen on (0: any free port)')
      .default(DEFAULTS.port).env('PREWARM_API_PORT').argParser(whole('--port', 0, 65_535)))
    .addOption(new Option('--concurrency <n>', 'tasks run at once')
      .default(DEFAULTS.concurrency).env('PREWARM_API_CONCURRENCY').argParser(whole('--concurrency', 1)))
    .addOption(new Option('--grace-seconds <n>',
      'on SIGTERM/SIGINT, how long running tasks may finish before they are cancelled')
      .default(DEFAULTS.graceSeconds).argParser(whole('--grace-seconds', 0)))
    .action(async (opts: { host: string; port: number; concurrency: number; graceSeconds: number }) => {
      // A service logs its requests and tasks: info unless the operator chose a level.
      if (!process.env.PREWARM_LOG_LEVEL && !globals(program).verbose) setLogLevel('info');
      const log = logger({ part: 'serve' });
      log.info({ host: opts.host, port: opts.port, concurrency: opts.concurrency,
        graceSeconds: opts.graceSeconds }, 'config');
      if (!LOOPBACK.has(opts.host)) {
        log.warn({ host: opts.host }, 'listening beyond loopback: the bearer token is the only ' +
          'protection and traffic is not encrypted; put a TLS proxy in front');
      }

      const release = await claimService(opts.host, opts.port);
      let service: Awaited<ReturnType<typeof startService>>;
      try {
        service = await startService({ host: opts.host, port: opts.port, concurrency: opts.concurrency });
      } catch (err) {
        await release();
        throw err;
      }
      process.stderr.write(`prewarm: serving on ${service.url}\n` +
        `prewarm: API token ${service.tokenCreated ? 'created in' : 'read from'} ${service.tokenPath} ` +
        '(send it as "Authorization: Bearer <token>")\n');

      await new Promise<void>((resolve) => {
        let signals = 0;
        const onSignal = (signal: NodeJS.Signals) => {
          signals += 1;
          if (signals > 1) {
            process.stderr.write(`prewarm: ${signal} again: cancelling the running tasks now\n`);
            service.hurry();
            return;
          }
          process.stderr.write(`prewarm: ${signal}: no new requests; running tasks get ` +
            `${opts.graceSeconds} s to finish\n`);
          service.shutdown(opts.graceSeconds * 1000).finally(release).then(resolve, (err) => {
            log.error({ err }, 'shutdown failed');
            process.exitCode = 1;
            resolve();
          });
        };
        process.on('SIGTERM', onSignal);
        process.on('SIGINT', onSignal);
      });
    });
}
