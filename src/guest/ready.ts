import { readFile } from 'node:fs/promises';
import type { Vm } from '../engine/vm.js';
import { GuestError } from '../util/errors.js';
import { AgentClient } from './agent.js';
import { Guest } from './guest.js';

/** A VM is ready when its agent answers. If it does not in time, the VM is destroyed and
 * the error says where to look. */
export async function waitForGuest(vm: Vm, timeoutMs: number): Promise<Guest> {
  try {
    const exited = vm.processExited.then(async () => {
      throw new GuestError(vm.id, `QEMU exited before the guest agent answered; ${await vm.qemuLogTail()}`);
    });
    const agent = await Promise.race([
      AgentClient.connect(vm.files.agentSocket, { vmId: vm.id, timeoutMs, serialLogPath: vm.files.serialLog }),
      exited,
    ]);
    return new Guest(agent);
  } catch (err) {
    const serial = await readFile(vm.files.serialLog, 'utf8').catch(() => '');
    await vm.destroy().catch(() => {});
    if (err instanceof GuestError && serial.trim()) {
      err.message += `\nlast lines of the guest's console:\n${serial.trim().split('\n').slice(-8).join('\n')}`;
    }
    throw err;
  }
}

/** A restored guest keeps the snapshot's clock and CRNG state: fix both before any work. */
export async function freshenRestoredGuest(guest: Guest): Promise<void> {
  await guest.refresh();
}
