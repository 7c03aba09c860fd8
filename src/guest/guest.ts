import { shellQuote } from '../util/shell.js';
import { randomBytes } from 'node:crypto';
import { GuestError } from '../util/errors.js';
import type { AgentClient } from './agent.js';
import type { ExecResult } from './exec.js';
import { GUEST_REFRESH_PATH } from '../image/guest-helper.js';

/**
 * What prewarm does to a guest, on top of the agent's primitives. The guest is Debian
 * minbase plus git, nodejs, npm, qemu-guest-agent, iproute2 and util-linux; perl-base comes
 * with minbase, python does not.
 */

export interface RunOptions {
  timeoutMs: number;
  /** Added to DEFAULT_ENV; the agent's own environment is not inherited. */
  env?: Record<string, string>;
  cwd?: string;
}

export interface RunResult extends Omit<ExecResult, 'stdout' | 'stderr'> {
  stdout: string;
  stderr: string;
}

export const DEFAULT_ENV: Readonly<Record<string, string>> = {
  PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
  HOME: '/root',
  LANG: 'C.UTF-8',
};

const ENTROPY_BYTES = 512;
const HOUSEKEEPING_TIMEOUT_MS = 30_000;

/**
 * Adds stdin to the input pool with full credit (RNDADDENTROPY, 0x40085203, which also
 * initialises a CRNG that was not ready when the snapshot was taken), then makes the CRNG
 * reseed (RNDRESEEDCRNG, 0x5207). See the guest helper's source for why both.
 */
const RESEED_PERL = [
  'open(my $f, ">", "/dev/urandom") or die "open /dev/urandom: $!";',
  'binmode STDIN; local $/; my $d = <STDIN>;',
  'my $info = pack("i i", length($d) * 8, length($d)) . $d;',
  'ioctl($f, 0x40085203, $info) or die "RNDADDENTROPY: $!";',
  'ioctl($f, 0x5207, 0) or die "RNDRESEEDCRNG: $!";',
].join(' ');

/**
 * The fallback of `refresh` for guests whose image has no prewarm-refresh helper; it does
 * what the helper does (its source says why each step): set CLOCK_REALTIME to the host time given
 * on the command line plus the time this process took to start (its start time from
 * /proc/self/stat against CLOCK_BOOTTIME, syscall 228 clock 7), with settimeofday (syscall
 * 164 on x86-64); then reseed the CRNG as RESEED_PERL does. The agent's own set-time also
 * runs `hwclock -w`, which waits for the RTC's next second boundary (0.6-1 s under TCG).
 */
const REFRESH_PERL = [
  'my ($s, $us) = @ARGV;',
  'open(my $st, "<", "/proc/self/stat") or die "stat: $!"; my $line = <$st>;',
  'my @f = split(/ /, substr($line, rindex($line, ")") + 2)); my $started = $f[19] / 100;',
  'my $bt = "\\0" x 16; syscall(228, 7, $bt) == 0 or die "clock_gettime: $!";',
  'my ($bs, $bns) = unpack("q q", $bt); my $lag = $bs + $bns / 1e9 - $started;',
  '$lag = 0 if $lag < 0 || $lag > 30; my $t = $s + $us / 1e6 + $lag;',
  'my $tv = pack("q q", int($t), int(($t - int($t)) * 1e6));',
  'syscall(164, $tv, 0) == 0 or die "settimeofday: $!";',
  RESEED_PERL,
].join(' ');

export class Guest {
  constructor(readonly agent: AgentClient) {}

  get vmId(): string {
    return this.agent.vmId;
  }

  /**
   * Make the guest safe to freeze: stop free page reporting, then flush its disks.
   *
   * Reporting must stop before the snapshot because clones inherit it: QEMU 7.2 discards a
   * reported page of a file-backed RAM block by punching a hole in the file, even when the
   * clone maps it privately, which would zero pages of the shared snapshot under every
   * other clone. An order above the largest buddy order means no page is ever reported.
   * Remove when the VMM discards private file mappings with madvise only (newer QEMU,
   * Firecracker).
   */
  async prepareForSnapshot(): Promise<void> {
    const result = await this.agent.sh(
      'echo 99 > /sys/module/page_reporting/parameters/page_reporting_order && sync',
      { timeoutMs: HOUSEKEEPING_TIMEOUT_MS },
    );
    this.check(result, 'preparing the guest for a snapshot');
  }

  /**
   * Set the clock from the host and reseed entropy, in one guest process: the image's static
   * helper (see src/image/guest-helper), or the same in perl on a guest whose image predates
   * it (exit 127: not found), which costs 0.3-0.4 s more under TCG.
   */
  async refresh(): Promise<void> {
    const run = (path: string, args: string[]) => {
      const nowUs = BigInt(Date.now()) * 1000n;
      return this.agent.exec({
        path, args: [...args, String(nowUs / 1_000_000n), String(nowUs % 1_000_000n)],
        inputData: randomBytes(ENTROPY_BYTES), timeoutMs: HOUSEKEEPING_TIMEOUT_MS,
      });
    };
    let result = await run(GUEST_REFRESH_PATH, []);
    if (result.exitCode === 127) result = await run('/usr/bin/perl', ['-e', REFRESH_PERL]);
    this.check(result, 'setting the guest clock and reseeding its CRNG');
  }

  /** Write dirty pages to the guest's disk. */
  async flush(): Promise<void> {
    const result = await this.agent.sh('sync', { timeoutMs: HOUSEKEEPING_TIMEOUT_MS });
    this.check(result, 'sync');
  }

  /** Run a shell script; a non-zero exit is a result, not an error. */
  async run(script: string, opts: RunOptions): Promise<RunResult> {
    const body =
      opts.cwd === undefined ? script : `cd -- ${shellQuote(opts.cwd)} || exit 1\n${script}`;
    const env = Object.entries({ ...DEFAULT_ENV, ...opts.env }).map(([k, v]) => `${k}=${v}`);
    const result = await this.agent.sh(body, { timeoutMs: opts.timeoutMs, env });
    const { stdout, stderr } = result;
    return { ...result, stdout: stdout.toString('utf8'), stderr: stderr.toString('utf8') };
  }

  private check(result: ExecResult, what: string): void {
    if (result.exitCode === 0) return;
    const how = result.timedOut
      ? 'timed out'
      : result.signal !== null
        ? `was killed by signal ${result.signal}`
        : `exited with ${result.exitCode}`;
    throw new GuestError(this.vmId, `${what} ${how}: ${result.stderr.toString('utf8').trim()}`);
  }
}

export { shellQuote } from '../util/shell.js';
