import { execa, type Options } from 'execa';

/** The prewarm CLI from source, as a child process (no build needed). */
export function prewarmCli(args: string[], opts: Options = {}) {
  return execa('node', ['--import', 'tsx', 'src/cli/main.ts', ...args], { reject: false, ...opts });
}

/**
 * Run the CLI and send it SIGINT `delayMs` after its stderr first shows `marker` (the task's
 * command has started, say). Resolves with its result and whether the signal was sent.
 */
export async function interruptWhen(args: string[], marker: string, opts: Options = {}, delayMs = 1_000) {
  const child = prewarmCli(args, opts);
  let sent = false;
  let seen = '';
  child.stderr!.on('data', (chunk: Buffer) => {
    seen += chunk.toString();
    if (!sent && seen.includes(marker)) {
      sent = true;
      setTimeout(() => child.kill('SIGINT'), delayMs);
    }
  });
  const result = await child;
  return { result, sent };
}
