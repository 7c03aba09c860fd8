import type { Command } from 'commander';

export interface Globals {
  json: boolean;
  verbose: boolean;
}

export function globals(program: Command): Globals {
  const opts = program.opts<{ json?: boolean; verbose?: boolean }>();
  return { json: !!opts.json, verbose: !!opts.verbose };
}
