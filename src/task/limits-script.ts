/**
 * The guest side of running one command under limits, as /bin/sh (dash) scripts passed to
 * the agent inline. Two entry points:
 *
 *   sh -c LIMITS_SCRIPT prewarm-limits run CGROUP LOG MEMORY_MAX_BYTES PIDS_MAX CWD
 *   sh -c LIMITS_SCRIPT prewarm-limits collect CGROUP
 *
 * `run` creates /sys/fs/cgroup/prewarm/CGROUP, starts the command in it with its output
 * appended to LOG, waits, prints `exit_code=N` and then does what `collect` does: kill what
 * is left in the cgroup, print its counters as key=value lines, remove it. The supervising
 * shell stays outside the cgroup, so an OOM kill of the group (memory.oom.group) or a full
 * pids.max cannot take it down. The host calls `collect` itself when it killed `run` on a
 * timeout.
 *
 * The command's environment reaches the guest only through the agent's exec request (never a
 * file): PREWARM_COMMAND, PREWARM_ENV_NAMES and PREWARM_ENV_<name> for each task variable.
 *
 * Exit status 125 with a `prewarm-limits:` line on stderr means the script itself failed.
 */

/**
 * Runs inside the cgroup after prewarm-run: sets the task's variables (over the guest's),
 * removes prewarm's own, and runs the command with sh -c.
 */
export const COMMAND_SHELL = `cmd=$PREWARM_COMMAND
for name in $PREWARM_ENV_NAMES; do
  eval "export $name=\\"\\\${PREWARM_ENV_$name}\\""
  unset "PREWARM_ENV_$name"
done
unset PREWARM_COMMAND PREWARM_ENV_NAMES
exec /bin/sh -c "$cmd"
`;

// LIMITS_SCRIPT embeds it in single quotes.
if (COMMAND_SHELL.includes("'")) throw new Error('COMMAND_SHELL must not contain a single quote');

/** The script; see the top of this file. */
export const LIMITS_SCRIPT = `set -u
root=/sys/fs/cgroup/prewarm
command_shell='${COMMAND_SHELL}'
fail() { echo "prewarm-limits: $*" >&2; exit 125; }
populated() { grep -q '^populated 1' "$1/cgroup.events"; }

collect() {
  cg=$root/$1
  # Gone already: a timeout killed \`run\` after it had removed the cgroup.
  [ -d "$cg" ] || { echo "cgroup_missing=1"; exit 0; }
  leftovers=0
  if populated "$cg"; then
    leftovers=1
    echo 1 > "$cg/cgroup.kill" || fail "cannot kill the processes of $cg"
    i=0
    while populated "$cg"; do
      i=$((i + 1))
      [ $i -le 200 ] || fail "processes of $cg survived cgroup.kill for 10 s"
      sleep 0.05
    done
  fi
  echo "killed_leftovers=$leftovers"
  # memory.peak exists since Linux 5.19; the guest's 6.1 kernel has it. On an older kernel
  # the key is missing and the host reports the peak as unknown.
  [ -r "$cg/memory.peak" ] && echo "peak_memory_bytes=$(cat "$cg/memory.peak")"
  while read -r key value; do echo "memory_$key=$value"; done < "$cg/memory.events"
  while read -r key value; do echo "pids_$key=$value"; done < "$cg/pids.events"
  rmdir "$cg" || fail "cannot remove the cgroup $cg"
  echo "cgroup_removed=1"
}

run() {
  cg=$root/$1 log=$2
  mkdir -p "$root" "\${log%/*}" || fail "cannot create $root or the directory of $log"
  echo '+memory +pids' > "$root/cgroup.subtree_control" ||
    fail "cannot enable the memory and pids controllers in $root"
  [ ! -e "$log" ] || fail "$log exists: command $1 already ran in this guest"
  mkdir "$cg" || fail "cannot create the cgroup $cg"
  if ! { echo "$3" > "$cg/memory.max" && echo 0 > "$cg/memory.swap.max" &&
         echo 1 > "$cg/memory.oom.group" && echo "$4" > "$cg/pids.max"; }; then
    rmdir "$cg"
    fail "cannot set the limits of $cg"
  fi
  : > "$log" || fail "cannot create $log"

  /bin/sh -c 'echo $$ > "$1/cgroup.procs" || exit 125
cd -- "$2" || exit
exec /usr/local/bin/prewarm-run /bin/sh -c "$3"' prewarm-command "$cg" "$5" "$command_shell" \\
    < /dev/null >> "$log" 2>&1 &
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

/** The exec environment of `run`: the base variables, the command and the task's variables
 * under prefixed names. */
export function runEnv(
  base: Readonly<Record<string, string>>,
  command: string,
  taskEnv: Readonly<Record<string, string>>,
): string[] {
  const names = Object.keys(taskEnv);
  return [
    ...Object.entries(base).map(([k, v]) => `${k}=${v}`),
    `PREWARM_COMMAND=${command}`,
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
