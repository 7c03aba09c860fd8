import { DEFAULT_ENV, type Guest } from '../guest/guest.js';
import { GuestError, InputError } from '../util/errors.js';

/**
 * The task's change as a git patch, made inside the guest against the base commit. The
 * working tree is staged into a temporary index (GIT_INDEX_FILE), so the repository's own
 * index is never touched; `git add -A` leaves ignored files out and takes in new, deleted,
 * renamed, binary and mode-changed files. The patch applies with `git apply --binary`.
 */

export interface DiffOptions {
  repoDir: string;
  baseCommit: string;
  /** Past this size no patch is returned; 50 MiB unless set. */
  maxBytes?: number;
  timeoutMs?: number;
}

export interface DiffStats {
  filesChanged: number;
  insertions: number;
  deletions: number;
  binaryFiles: number;
}

export type DiffResult =
  | { tooLarge: false; patch: Buffer; sizeBytes: number; stats: DiffStats }
  /** The patch was larger than maxBytes: it is not returned at all, never cut short. */
  | { tooLarge: true; sizeBytes: number; stats: DiffStats };

export const DEFAULT_DIFF_MAX_BYTES = 50 * 2 ** 20;
const DEFAULT_TIMEOUT_MS = 5 * 60_000;

/**
 * Copies git's output to FILE while it is at most MAX bytes, and prints its full size. A
 * larger patch is counted, not stored: the guest's /tmp is memory.
 */
const BOUNDED_COPY_PERL = `
my ($max, $path, @cmd) = @ARGV;
open(my $out, ">", $path) or die "cannot write $path: $!\\n";
open(my $in, "-|", @cmd) or die "cannot run $cmd[0]: $!\\n";
binmode $in; binmode $out;
my $total = 0;
while (my $n = read($in, my $buf, 1 << 20)) {
  $total += $n;
  if ($total <= $max) { print $out $buf or die "cannot write $path: $!\\n"; }
  elsif ($out) { close $out; unlink $path; undef $out; }
}
close $in or die "@cmd failed with status " . ($? >> 8) . "\\n";
if ($out) { close $out or die "cannot write $path: $!\\n"; }
print "$total\\n";
`;

/**
 * Args: REPO BASE MAX_BYTES. Prints the patch size, the directory holding `patch` (absent
 * when too large), then `git diff --numstat -z`. The host removes the directory.
 */
const DIFF_SCRIPT = `set -eu
max=$3
cd -- "$1"
base=$(git rev-parse --verify --quiet "$2^{commit}") ||
  { echo "prewarm-diff: $2 is not a commit in $1" >&2; exit 2; }
real=$(git rev-parse --git-path index)
dir=$(mktemp -d /tmp/prewarm-diff.XXXXXX)
export GIT_INDEX_FILE="$dir/index"
# The directory goes too when it holds no patch.
trap 'rm -f "$GIT_INDEX_FILE"; rmdir "$dir" 2>/dev/null || :' EXIT
# Starting from the real index reuses its stat data, so unchanged files are not rehashed.
if [ -f "$real" ]; then cp -- "$real" "$GIT_INDEX_FILE"; fi
git add -A
set -- --no-pager -c core.quotePath=false diff --cached --no-color --no-ext-diff \\
  --no-textconv --no-relative --src-prefix=a/ --dst-prefix=b/ -M
size=$(perl -e "$BOUNDED_COPY" "$max" "$dir/patch" git "$@" --binary --full-index "$base" --)
out=$dir
[ -f "$dir/patch" ] || out=
printf 'size=%s\\ndir=%s\\n' "$size" "$out"
git "$@" --numstat -z "$base" --
`;

export async function extractDiff(guest: Guest, opts: DiffOptions): Promise<DiffResult> {
  const maxBytes = opts.maxBytes ?? DEFAULT_DIFF_MAX_BYTES;
  validate(opts, maxBytes);

  const env = Object.entries({ ...DEFAULT_ENV, BOUNDED_COPY: BOUNDED_COPY_PERL })
    .map(([k, v]) => `${k}=${v}`);
  const exec = await guest.agent.exec({
    path: '/usr/local/bin/prewarm-run',
    args: ['/bin/sh', '-c', DIFF_SCRIPT, 'prewarm-diff', opts.repoDir, opts.baseCommit,
      String(maxBytes)],
    env,
    timeoutMs: opts.timeoutMs ?? DEFAULT_TIMEOUT_MS,
  });
  if (exec.exitCode !== 0) {
    const how = exec.timedOut ? 'timed out' : `failed (exit ${exec.exitCode})`;
    throw new GuestError(guest.vmId, `extracting the diff of ${opts.repoDir} against ` +
      `${opts.baseCommit} ${how}: ${exec.stderr.toString('utf8').trim()}`, { code: 'TASK_DIFF' });
  }

  const { sizeBytes, dir, numstat } = parseOutput(guest, exec.stdout);
  const stats = parseNumstat(numstat);
  if (dir === '') return { tooLarge: true, sizeBytes, stats };

  try {
    const patch = await guest.agent.readFile(`${dir}/patch`);
    if (patch.length !== sizeBytes) {
      throw new GuestError(guest.vmId, `the patch in ${dir} is ${patch.length} bytes, ` +
        `git wrote ${sizeBytes}`, { code: 'TASK_DIFF' });
    }
    return { tooLarge: false, patch, sizeBytes, stats };
  } finally {
    await guest.agent.sh(`rm -rf -- '${dir}'`, { timeoutMs: 30_000 }).catch(() => undefined);
  }
}

interface ScriptOutput {
  sizeBytes: number;
  /** Empty when the patch was too large. */
  dir: string;
  numstat: Buffer;
}

function parseOutput(guest: Guest, stdout: Buffer): ScriptOutput {
  const first = stdout.indexOf('\n');
  const second = stdout.indexOf('\n', first + 1);
  const size = /^size=(\d+)$/.exec(stdout.subarray(0, first).toString());
  const dirLine = stdout.subarray(first + 1, second).toString();
  const dir = /^dir=(\/tmp\/prewarm-diff\.\w+)?$/.exec(dirLine);
  if (first < 0 || second < 0 || !size || !dir) {
    const text = stdout.subarray(0, 200).toString();
    throw new GuestError(guest.vmId, `unexpected output of the diff script: ${text}`);
  }
  return { sizeBytes: Number(size[1]), dir: dir[1] ?? '', numstat: stdout.subarray(second + 1) };
}

/**
 * `git diff --numstat -z`: per file `ADDED\tDELETED\tPATH\0`, or for a rename or copy
 * `ADDED\tDELETED\t\0OLD\0NEW\0`; a binary file has `-` for both counts.
 */
export function parseNumstat(raw: Buffer): DiffStats {
  const fields = raw.toString('utf8').split('\0');
  const stats: DiffStats = { filesChanged: 0, insertions: 0, deletions: 0, binaryFiles: 0 };
  for (let i = 0; i < fields.length; i++) {
    const m = /^(-|\d+)\t(-|\d+)\t(.*)$/s.exec(fields[i]);
    if (!m) continue;
    stats.filesChanged++;
    if (m[1] === '-') stats.binaryFiles++;
    else {
      stats.insertions += Number(m[1]);
      stats.deletions += Number(m[2]);
    }
    if (m[3] === '') i += 2; // a rename: the old and new paths follow
  }
  return stats;
}

function validate(opts: DiffOptions, maxBytes: number): void {
  if (!opts.repoDir.startsWith('/')) {
    throw new InputError(`extractDiff: repoDir "${opts.repoDir}" must be an absolute path`);
  }
  if (!/^[\w./^~@{}-]+$/.test(opts.baseCommit) || opts.baseCommit.startsWith('-')) {
    throw new InputError(`extractDiff: baseCommit "${opts.baseCommit}" is not a commit or ref`);
  }
  if (!Number.isSafeInteger(maxBytes) || maxBytes < 0) {
    throw new InputError('extractDiff: maxBytes must be an integer ≥ 0');
  }
}
