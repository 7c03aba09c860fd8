import { GUEST_ENV_LOAD } from '../image/rootfs.js';

/**
 * The guest side of running one command under limits, as /bin/sh (dash) scripts passed to
 * the agent inline. Two entry points:
 *
 *   sh -c LIMITS_SCRIPT prewarm-limits run CGROUP LOG MEMORY_MAX_BYTES PIDS_MAX CWD COMMAND
 *   sh -c LIMITS_SCRIPT prewarm-limits collect CGROUP
 *
 * `run` creates /sys/fs/cgroup/prewarm/CGROUP, starts COMMAND in it with its output appended
 * to LOG, waits, prints `exit_code=N` and then does what `collect` does: kill what is left in
 * the cgroup, print its counters as key=value lines, remove it. The supervising shell stays
 * outside the cgroup, so an OOM kill of the group (memory.oom.group) or a full pids.max
 * cannot take it down. The host calls `collect` itself when it killed `run` on a timeout.
 *
 * The task's variables reach the guest only in the agent's exec request (never a file), as
 * PREWARM_ENV_NAMES and PREWARM_ENV_<name>; ENV_PREFIX sets them after the guest's environment
 * is loaded (what prewarm-run does, done here in the shell), so the task's values win.
 *
 * Every process start costs 0.04-0.15 s in a TCG guest, so the script uses shell builtins
 * (read, echo, `.`) wherever it can: running `true` takes three execs in all (this script's
 * shell, the command's shell, true). The agent starts it without setsid: a timeout ends the
 * command with cgroup.kill, and the script itself runs nothing else.
 *
 * Exit status 125 with a `prewarm-limits:` line on stderr means the script itself failed.
 */

/**
 * Put before the command on its first line (so the command's line numbers stay as written):
 * sets the task's variables and removes prewarm's own. It loops over the positional
 * parameters (empty in `sh -c`), so no variable name of its own can clash with the task's.
 */
export const ENV_PREFIX =
  'set -- $PREWARM_ENV_NAMES; while [ $# -gt 0 ]; do ' +
  'eval "export $1=\\"\\${PREWARM_ENV_$1}\\""; unset "PREWARM_ENV_$1"; shift; done; ' +
  'unset PREWARM_ENV_NAMES; ';

// LIMITS_SCRIPT embeds it in single quotes.
if (ENV_PREFIX.includes("'")) throw new Error('ENV_PREFIX must not contain a single quote');

/** The script; see the top of this file. */
export const LIMITS_SCRIPT = `set -u
root=/sys/fs/cgroup/prewarm
env_prefix='${ENV_PREFIX}'
fail() { echo "prewarm-limits: $*" >&2; exit 125; }
populated() {
  while read -r key value; do [ "$key $value" = "populated 1" ] && return 0; done < "$1"
  return 1
}

collect() {
  cg=$root/$1
  # Gone already: a timeout killed \`run\` after it had removed the cgroup.
  [ -d "$cg" ] || { echo "cgroup_missing=1"; exit 0; }
  leftovers=0
  if populated "$cg/cgroup.events"; then
    leftovers=1
    echo 1 > "$cg/cgroup.kill" || fail "cannot kill the processes of $cg"
    i=0
    while populated "$cg/cgroup.events"; do
      i=$((i + 1))
      [ $i -le 200 ] || fail "processes of $cg survived cgroup.kill for 10 s"
      sleep 0.05
    done
  fi
  echo "killed_leftovers=$leftovers"
  # memory.peak exists since Linux 5.19; the guest's 6.1 kernel has it. Were it missing, the
  # host would report the peak as unknown.
  if [ -r "$cg/memory.peak" ]; then
    read -r peak < "$cg/memory.peak"
    echo "peak_memory_bytes=$peak"
  fi
  while read -r key value; do echo "memory_$key=$value"; done < "$cg/memory.events"
  while read -r key value; do echo "pids_$key=$value"; done < "$cg/pids.events"
  rmdir "$cg" || fail "cannot remove the cgroup $cg"
  echo "cgroup_removed=1"
}

run() {
  cg=$root/$1 log=$2
  if [ ! -d "$root" ] || [ ! -d "\${log%/*}" ]; then
    mkdir -p "$root" "\${log%/*}" || fail "cannot create $root or the directory of $log"
  fi
  # Enabled once per guest (a snapshot keeps it); the write costs a restored guest 40 ms.
  read -r controllers < "$root/cgroup.subtree_control" || controllers=
  case " $controllers " in
    *" memory "*" pids "*) ;;
    *) echo '+memory +pids' > "$root/cgroup.subtree_control" ||
         fail "cannot enable the memory and pids controllers in $root" ;;
  esac
  [ ! -e "$log" ] || fail "$log exists: command $1 already ran in this guest"
  mkdir "$cg" || fail "cannot create the cgroup $cg"
  if ! { echo "$3" > "$cg/memory.max" && echo 0 > "$cg/memory.swap.max" &&
         echo 1 > "$cg/memory.oom.group" && echo "$4" > "$cg/pids.max"; }; then
    rmdir "$cg"
    fail "cannot set the limits of $cg"
  fi
  : > "$log" || fail "cannot create $log"

  # A subshell moves itself in (0 means the writing process) and becomes the command.
  (
    echo 0 > "$cg/cgroup.procs" || exit 125
    cd -- "$5" || exit
    ${GUEST_ENV_LOAD}
    exec /bin/sh -c "$env_prefix$6"
  ) < /dev/null >> "$log" 2>&1 &
  wait $!
  echo "exit_code=$?"
  collect "$1"
}

case "$1" in
  run) shift; run "$@" ;;
  collect) shift; collect "$@" ;;
  *) fail "unknown mode $1" ;;
esac
`;

/** The exec environment of the script: the base variables and the task's, prefixed. */
export function scriptEnv(
  base: Readonly<Record<string, string>>,
  taskEnv: Readonly<Record<string, string>>,
): string[] {
  const names = Object.keys(taskEnv);
  return [
    ...Object.entries(base).map(([k, v]) => `${k}=${v}`),
    `PREWARM_ENV_NAMES=${names.join(' ')}`,
    ...names.map((name) => `PREWARM_ENV_${name}=${taskEnv[name]}`),
  ];
}

/** Parse the key=value lines the script prints. */
export function parseKeyValues(text: string): Map<string, string> {
  const values = new Map<string, string>();
  for (const line of text.split('\n')) {
    const eq = line.indexOf('=');
    if (eq > 0) values.set(line.slice(0, eq), line.slice(eq + 1).trim());
  }
  return values;
}
