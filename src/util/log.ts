import { pino, type Logger } from 'pino';

/**
 * The operator's log: structured JSON lines on stderr, tagged with ids (vmId, envId, taskId,
 * step). Guest output never goes here; it is kept with the task that produced it.
 * PREWARM_LOG_LEVEL sets the level (default "info"; the CLI lowers it to "warn" unless
 * --verbose is given).
 */
export type { Logger };

let root: Logger | undefined;

export function rootLogger(): Logger {
  root ??= pino(
    { level: process.env.PREWARM_LOG_LEVEL ?? 'info', base: undefined },
    pino.destination({ dest: 2, sync: true }),
  );
  return root;
}

export function setLogLevel(level: string): void {
  rootLogger().level = level;
}

export function logger(bindings: Record<string, unknown>): Logger {
  return rootLogger().child(bindings);
}

/** Run one named step, logging its name and duration; the step's error is rethrown. */
export async function step<T>(log: Logger, name: string, fn: () => Promise<T>): Promise<T> {
  const startedAt = performance.now();
  try {
    const value = await fn();
    log.debug({ step: name, ms: Math.round(performance.now() - startedAt) }, 'step done');
    return value;
  } catch (err) {
    log.debug({ step: name, ms: Math.round(performance.now() - startedAt), err }, 'step failed');
    throw err;
  }
}
