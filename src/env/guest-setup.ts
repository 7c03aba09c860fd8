import { randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { AgentClient } from '../guest/agent.js';
import { Guest, shellQuote } from '../guest/guest.js';
import { PrepareError } from '../util/errors.js';
import type { ResolvedEnv } from './inputs.js';

/** Where the repository lives in every guest of an environment. */
export function guestRepoDir(envName: string): string {
  return `/workspace/${envName}`;
}

const GIT_TIMEOUT_MS = 10 * 60_000;
const BUNDLE = '/tmp/prewarm-repo.bundle';

/** Clone the repository into the guest at the resolved commit, on a branch named prewarm.
 * A local repository travels as a git bundle over the agent (the guest never sees the host's
 * files); a URL is cloned by the guest over its network. */
export async function cloneIntoGuest(guest: Guest, env: ResolvedEnv, bundleFile: string | null): Promise<void> {
  const dir = guestRepoDir(env.spec.name);
  const source = bundleFile ? BUNDLE : env.spec.repository.url!;
  if (bundleFile) {
    await guest.agent.writeFile(BUNDLE, await readFile(bundleFile));
  }
  const script = [
    'git config --global user.name prewarm && git config --global user.email prewarm@localhost',
    "git config --global safe.directory '*' && git config --global advice.detachedHead false",
    `git clone --quiet ${shellQuote(source)} ${shellQuote(dir)}`,
    `cd ${shellQuote(dir)} && git checkout --quiet -B prewarm ${env.commit}`,
    bundleFile ? `git remote remove origin; rm -f ${BUNDLE}` : 'true',
  ].join(' && ');
  const result = await guest.agent.exec({
    path: '/usr/local/bin/prewarm-run', args: ['sh', '-c', script], timeoutMs: GIT_TIMEOUT_MS,
  });
  if (result.exitCode !== 0) {
    throw new PrepareError(`environment ${env.spec.name}: cloning ${env.inputs.repository} at ` +
      `${env.commit.slice(0, 12)} in VM ${guest.vmId} failed (exit ${result.exitCode}): ` +
      `${result.stderr.toString().trim().split('\n').slice(-5).join('\n')}` +
      (bundleFile ? '' : '\nIs the URL reachable from the guest, and is network.setup on?'),
      { code: 'CLONE_FAILED' });
  }
}

/**
 * Scrub what the setup's secrets may have left in guest memory before the snapshot. The
 * kernel zeroes freed pages (init_on_free=1), so what remains is live memory: the agent's
 * heap, which saw the request that carried them, and the virtio-serial receive buffers,
 * which are reused but never cleared. Restarting the agent frees its heap; pushing random
 * bytes through the port overwrites every receive buffer (see SCRUB_PUSH_BYTES).
 *
 * The guest's init restarts the agent when it exits. The old agent is killed from a detached
 * shell a moment after we hang up (it cannot answer its own kill), and on a slow guest that
 * moment can come after we reconnect: so the agent we talk to afterwards is checked to be a
 * new process before anything goes through it.
 */
export async function scrubSecrets(guest: Guest, agentSocket: string, serialLogPath: string): Promise<Guest> {
  const oldPid = await agentPid(guest.agent);
  await guest.agent.exec({
    path: '/bin/sh', args: ['-c', `setsid sh -c "sleep 0.3; kill ${oldPid}" >/dev/null 2>&1 &`],
    timeoutMs: 10_000,
  });
  await guest.agent.close();
  const deadline = Date.now() + AGENT_RESTART_TIMEOUT_MS;
  for (;;) {
    await new Promise((r) => setTimeout(r, 500));
    const agent = await AgentClient.connect(agentSocket, {
      vmId: guest.vmId, timeoutMs: Math.max(5_000, deadline - Date.now()), serialLogPath,
    });
    // The old agent may die in the middle of this request: then ask the new one.
    const pid = await agentPid(agent).catch(() => null);
    if (pid !== null && pid !== oldPid) {
      for (let sent = 0; sent < SCRUB_PUSH_BYTES; sent += SCRUB_CHUNK_BYTES) {
        await agent.writeFile('/dev/null', randomBytes(SCRUB_CHUNK_BYTES));
      }
      return new Guest(agent);
    }
    await agent.close();
    if (Date.now() > deadline) {
      throw new PrepareError(`VM ${guest.vmId}: the guest agent (pid ${oldPid}) was not replaced by a ` +
        `new one within ${AGENT_RESTART_TIMEOUT_MS / 1000} s while scrubbing secrets; no snapshot ` +
        `was stored. See the guest's serial log ${serialLogPath}`, { code: 'SCRUB_FAILED' });
    }
  }
}

const AGENT_RESTART_TIMEOUT_MS = 90_000;

/**
 * How much to push through the agent's port to overwrite its receive buffers. QEMU offers a
 * virtio-mmio queue of VIRTQUEUE_MAX_SIZE (1024) entries and the guest's virtio_console fills
 * every entry with a one-page buffer, used in turn; each message starts at the beginning of a
 * buffer, so a request that carried a secret stays readable until its buffer comes round
 * again. (1 MiB, the old figure, left the setup's exec request, env and all, in the snapshot.)
 * On the wire base64 makes 3 bytes 4: 6 MiB fills about 2048 pages, every buffer twice, so
 * even a buffer that one pass filled only in part is filled whole once.
 */
const SCRUB_PUSH_BYTES = 6 * 2 ** 20;
const SCRUB_CHUNK_BYTES = 2 ** 20;

/** The pid of the agent that answers: the parent of a command it runs. */
async function agentPid(agent: AgentClient): Promise<number> {
  const result = await agent.exec({ path: '/bin/sh', args: ['-c', 'echo $PPID'], timeoutMs: 20_000 });
  const pid = Number(result.stdout.toString().trim());
  if (result.exitCode !== 0 || !Number.isInteger(pid) || pid <= 1) {
    throw new PrepareError(`VM ${agent.vmId}: cannot tell the guest agent's pid ` +
      `(exit ${result.exitCode}, output "${result.stdout.toString().trim()}")`, { code: 'SCRUB_FAILED' });
  }
  return pid;
}
