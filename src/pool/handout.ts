import { randomBytes } from 'node:crypto';
import type { Guest } from '../guest/guest.js';
import { GuestError } from '../util/errors.js';

const ENTROPY_BYTES = 512;
const HANDOUT_TIMEOUT_MS = 30_000;
/** A guest clock this far outside the hand-out's round trip is set again. */
const CLOCK_SLACK_MS = 100;

/**
 * One process in the guest: write fresh host randomness to /dev/urandom, force a CRNG
 * reseed (RNDRESEEDCRNG, 0x5207), then print the guest's CLOCK_REALTIME (clock_gettime is
 * syscall 228 on x86-64) as "seconds nanoseconds".
 */
const HANDOUT_PERL = [
  'open(my $f, ">", "/dev/urandom") or die "open /dev/urandom: $!";',
  'binmode STDIN; local $/; my $d = <STDIN>;',
  'defined(syswrite($f, $d)) or die "write /dev/urandom: $!";',
  'ioctl($f, 0x5207, 0) or die "RNDRESEEDCRNG: $!";',
  'my $ts = "\\0" x 16; syscall(228, 0, $ts) == 0 or die "clock_gettime: $!";',
  'my ($s, $ns) = unpack("q q", $ts); print "$s $ns\\n";',
].join(' ');

/**
 * Make a pool VM fit for a task at hand-out: the guest may have sat idle for minutes.
 * Entropy is always reseeded. The clock is checked in the same process and set only when it
 * is off: the agent's set-time also runs `hwclock -w`, which waits for the RTC's next second
 * boundary (0.6-1 s measured under TCG), while a pool VM's clock, set when it was restored,
 * keeps time while it idles (the guest's TSC runs at the host's rate). Returns whether the
 * clock had to be set. Move into Guest when the restore path wants the same.
 */
export async function freshenForHandOut(guest: Guest): Promise<{ clockSet: boolean; offsetMs: number }> {
  const sentMs = Date.now();
  const result = await guest.agent.exec({
    path: '/usr/bin/perl', args: ['-e', HANDOUT_PERL], inputData: randomBytes(ENTROPY_BYTES),
    timeoutMs: HANDOUT_TIMEOUT_MS,
  });
  const receivedMs = Date.now();
  if (result.exitCode !== 0) {
    throw new GuestError(guest.vmId, `reseeding the guest CRNG at hand-out failed (exit ${result.exitCode}): ` +
      result.stderr.toString('utf8').trim());
  }
  const [seconds, nanos] = result.stdout.toString('utf8').trim().split(' ').map(Number);
  const guestMs = seconds * 1000 + nanos / 1e6;
  const offsetMs = guestMs < sentMs ? guestMs - sentMs : guestMs > receivedMs ? guestMs - receivedMs : 0;
  const clockSet = !Number.isFinite(guestMs) || Math.abs(offsetMs) > CLOCK_SLACK_MS;
  if (clockSet) await guest.syncClock();
  return { clockSet, offsetMs: Math.round(offsetMs) };
}
