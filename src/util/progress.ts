import cliProgress from 'cli-progress';

/**
 * Progress of long work (image builds, prepares). On a terminal it draws a bar with the
 * current step's name; otherwise each step is one line on stderr. `quiet` prints nothing.
 */
export interface Progress {
  step(name: string): void;
  done(): void;
}

export function createProgress(title: string, totalSteps: number, quiet = false): Progress {
  if (quiet) return { step: () => {}, done: () => {} };

  if (!process.stderr.isTTY) {
    let n = 0;
    return {
      step: (name) => process.stderr.write(`${title} [${++n}/${totalSteps}] ${name}\n`),
      done: () => {},
    };
  }

  const bar = new cliProgress.SingleBar(
    {
      format: `${title} [{bar}] {value}/{total} {step} ({duration}s)`,
      stream: process.stderr,
      hideCursor: true,
      clearOnComplete: false,
    },
    cliProgress.Presets.shades_classic,
  );
  bar.start(totalSteps, 0, { step: '' });
  let n = 0;
  return {
    step: (name) => bar.update(n++, { step: name }),
    done: () => {
      bar.update(totalSteps, { step: 'done' });
      bar.stop();
    },
  };
}
