import { shellQuote } from '../util/shell.js';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { execa, type ResultPromise } from 'execa';
import { paths } from '../util/paths.js';
import { logger, step, type Logger } from '../util/log.js';
import { NotFoundError, VmError, errorMessage } from '../util/errors.js';
import { qemuAlive, readRecord } from './reaper.js';
import { CleanupStack } from './cleanup.js';
import { QmpClient } from './qmp.js';
import { QEMU_BINARY, qemuVersion } from './qemu-binary.js';
import { qemuArgs, vmFiles, type QemuLaunch } from './qemu-args.js';
import { chooseAccelerator } from './accel.js';
import { processStartTime, residentMemory, selfRecord } from './proc.js';
import type { Accelerator, VmConfig, VmRecord, VmState } from './types.js';

const QMP_CONNECT_TIMEOUT_MS = 10_000;
const QUIT_GRACE_MS = 2_000;
/** Unix socket paths are limited to 108 bytes. */
const MAX_SOCKET_PATH = 107;

export function newVmId(): string {
  return `vm-${randomBytes(5).toString('hex')}`;
}

/**
 * One QEMU microVM. Lifecycle: `Vm.boot` or `Vm.restore` (starting → running), `pause`,
 * `snapshot` (ends the VM: its memory and disk now belong to the snapshot), `destroy`
 * (safe to call twice; also `await using`). Every host resource the VM takes is pushed
 * on its cleanup stack when taken, so destroy undoes exactly what was done.
 */
export class Vm implements AsyncDisposable {
  readonly id: string;
  readonly dir: string;
  readonly config: VmConfig;
  readonly accel: Accelerator;
  readonly log: Logger;
  state: VmState = 'starting';
  restoredFrom: string | null = null;
  private child?: ResultPromise;
  private qmpClient?: QmpClient;
  private exited?: Promise<unknown>;
  private readonly cleanup = new CleanupStack();

  private constructor(id: string, config: VmConfig, accel: Accelerator) {
    this.id = id;
    this.dir = join(paths.vms(), id);
    this.config = config;
    this.accel = accel;
    this.log = logger({ vmId: id });
  }

  get files() {
    return vmFiles(this.dir);
  }

  get qemuPid(): number | undefined {
    return this.child?.pid ?? this.attachedPid;
  }

  private attachedPid?: number;

  /** A handle on a running VM that another prewarm process started (`prewarm vm boot`). */
  static async attach(vmId: string): Promise<Vm> {
    const dir = join(paths.vms(), vmId);
    const record = await readRecord(dir);
    if (!record || !qemuAlive(record, dir)) {
      throw new NotFoundError(`no running VM ${vmId}; \`prewarm vm ls\` lists the VMs`);
    }
    const vm = new Vm(vmId, record.config, record.accel);
    vm.restoredFrom = record.restoredFrom;
    vm.attachedPid = record.qemuPid;
    vm.exited = (async () => {
      while (qemuAlive(record, dir)) await new Promise((r) => setTimeout(r, 50));
    })();
    vm.cleanup.push('remove state dir', () => rm(dir, { recursive: true, force: true }));
    vm.cleanup.push('stop qemu', () => vm.stopProcess());
    vm.qmpClient = await QmpClient.connect(vm.files.qmpSocket, { vmId, timeoutMs: QMP_CONNECT_TIMEOUT_MS });
    const qmp = vm.qmpClient;
    vm.cleanup.push('close qmp', () => qmp.close());
    vm.state = 'running';
    return vm;
  }

  get qmp(): QmpClient {
    if (!this.qmpClient || this.state === 'destroyed') throw new VmError(this.id, 'is not running');
    return this.qmpClient;
  }

  /** Boot from the base image. The VM is running when this returns; its agent may not
   * answer yet (the guest is still booting). */
  static async boot(config: VmConfig, opts: { vmId?: string } = {}): Promise<Vm> {
    const vm = new Vm(opts.vmId ?? newVmId(), config, await chooseAccelerator(config));
    try {
      await vm.prepareDir();
      const f = vm.files;
      await step(vm.log, 'overlay', () => createOverlay(config.baseDiskPath, f.overlay, config.diskSizeBytes));
      await vm.launch({ accel: vm.accel, memoryPath: f.memory, memoryShared: true, diskPath: f.overlay, incoming: false });
      vm.state = 'running';
      vm.log.info({ accel: vm.accel, memoryMiB: config.memoryMiB }, 'vm booted');
      return vm;
    } catch (err) {
      await vm.destroy();
      throw err;
    }
  }

  /** Start a fresh VM from an engine snapshot directory that the caller has verified. The
   * memory file is mapped privately: pages load on touch and the file never changes. */
  static async restore(
    snapshotDir: string,
    config: VmConfig,
    opts: { vmId?: string; accel: Accelerator },
  ): Promise<Vm> {
    const vm = new Vm(opts.vmId ?? newVmId(), config, opts.accel);
    vm.restoredFrom = snapshotDir;
    try {
      await vm.prepareDir();
      const f = vm.files;
      await step(vm.log, 'overlay', () => createOverlay(join(snapshotDir, 'disk.qcow2'), f.overlay, config.diskSizeBytes));
      await vm.launch({
        accel: opts.accel, memoryPath: join(snapshotDir, 'memory.raw'), memoryShared: false,
        diskPath: f.overlay, incoming: true,
      });
      await step(vm.log, 'load-device-state', () => vm.loadDeviceState(join(snapshotDir, 'state.bin')));
      vm.state = 'running';
      vm.log.info({ snapshotDir }, 'vm restored');
      return vm;
    } catch (err) {
      await vm.destroy();
      throw err;
    }
  }

  private async prepareDir(): Promise<void> {
    await qemuVersion();
    if (this.files.agentSocket.length > MAX_SOCKET_PATH) {
      throw new VmError(this.id, `its socket path ${this.files.agentSocket} is longer than ` +
        `${MAX_SOCKET_PATH} bytes; set PREWARM_HOME to a shorter directory`);
    }
    await mkdir(this.dir, { recursive: true });
    this.cleanup.push('remove state dir', () => rm(this.dir, { recursive: true, force: true }));
  }

  private async launch(launch: QemuLaunch): Promise<void> {
    const args = qemuArgs(this.config, this.dir, launch);
    // An owned VM dies with its owner (PDEATHSIG survives exec); the reaper removes its files.
    const [file, argv] = this.config.detached
      ? [QEMU_BINARY, args]
      : ['setpriv', ['--pdeathsig', 'SIGKILL', QEMU_BINARY, ...args]];
    const child = execa(file, argv, {
      stdin: 'ignore',
      stdout: { file: this.files.qemuLog },
      stderr: { file: this.files.qemuLog },
      // Its own process group always: a Ctrl-C at the owner's terminal is the owner's to
      // handle (it cancels a task), not a signal that kills QEMU under it.
      detached: true,
      cleanup: !this.config.detached,
      reject: false,
    });
    this.child = child;
    this.exited = child.then((r) => r);
    if (this.config.detached) child.unref();
    this.cleanup.push('stop qemu', () => this.stopProcess());
    await this.writeRecord();

    const qmp = await step(this.log, 'qmp-connect', () =>
      Promise.race([
        QmpClient.connect(this.files.qmpSocket, { vmId: this.id, timeoutMs: QMP_CONNECT_TIMEOUT_MS }),
        this.exited!.then(async () => {
          throw new VmError(this.id, `QEMU exited at start: ${await this.qemuLogTail()}`);
        }),
      ]),
    );
    this.qmpClient = qmp;
    this.cleanup.push('close qmp', () => qmp.close());
  }

  private async loadDeviceState(statePath: string): Promise<void> {
    await this.qmp.execute('migrate-set-capabilities', {
      capabilities: [{ capability: 'x-ignore-shared', state: true }],
    });
    await this.qmp.execute('migrate-incoming', { uri: `exec:cat ${shellQuote(statePath)}` });
    await this.waitMigration('restore');
    // QEMU starts the guest by itself once the incoming migration completes (no -S).
    for (let i = 0; i < 500; i++) {
      const status = await this.qmp.execute<{ status: string }>('query-status');
      if (status.status === 'running') return;
      if (status.status !== 'inmigrate' && status.status !== 'paused' && status.status !== 'prelaunch') {
        throw new VmError(this.id, `guest is ${status.status} after loading the device state`);
      }
      if (status.status === 'paused') await this.qmp.execute('cont');
      await new Promise((r) => setTimeout(r, 5));
    }
    throw new VmError(this.id, 'guest did not resume after loading the device state');
  }

  private async waitMigration(what: string): Promise<void> {
    for (;;) {
      const info = await this.qmp.execute<{ status?: string; 'error-desc'?: string }>('query-migrate');
      if (info.status === 'completed') return;
      if (info.status === 'failed' || info.status === 'cancelled') {
        throw new VmError(this.id, `${what} of the device state ${info.status}: ` +
          `${info['error-desc'] ?? 'no reason given'}; ${await this.qemuLogTail()}`);
      }
      await new Promise((r) => setTimeout(r, 5));
    }
  }

  async pause(): Promise<void> {
    await this.qmp.execute('stop');
    this.state = 'paused';
  }

  async resume(): Promise<void> {
    await this.qmp.execute('cont');
    this.state = 'running';
  }

  /**
   * Write the device state next to the VM's memory file and overlay, then end the VM and
   * hand those three files to `destDir`. The caller flushes the guest first. Only booted VMs
   * can be snapshotted: a restored VM's RAM is a private mapping, not a file.
   */
  async saveDeviceState(statePath: string): Promise<void> {
    if (this.restoredFrom) {
      throw new VmError(this.id, 'was restored from a snapshot; only a booted VM can be snapshotted');
    }
    await this.pause();
    await this.qmp.execute('migrate-set-capabilities', {
      capabilities: [{ capability: 'x-ignore-shared', state: true }],
    });
    await this.qmp.execute('migrate', { uri: `exec:cat > ${shellQuote(statePath)}` });
    await this.waitMigration('save');
  }

  /** Stop QEMU but keep the VM's files (the snapshot takes them). */
  async stopForSnapshot(): Promise<void> {
    await this.stopProcess();
    this.state = 'destroyed';
  }

  /** Host memory held by the VMM process. */
  hostMemory(): { rssBytes: number; privateBytes: number } | null {
    return this.qemuPid ? residentMemory(this.qemuPid) : null;
  }

  /** Let go of a detached VM without stopping it: close QMP and stop watching QEMU, so
   * the process that booted it (`prewarm vm boot`) can exit while the VM runs on. */
  async release(): Promise<void> {
    if (!this.config.detached) throw new VmError(this.id, 'is owned by this process; destroy it instead');
    await this.qmpClient?.close();
    this.child?.unref();
    (this.child as unknown as { stdout?: { destroy?: () => void } } | undefined)?.stdout?.destroy?.();
  }

  async destroy(): Promise<void> {
    this.state = 'destroyed';
    const errors = await this.cleanup.unwind();
    if (errors.length > 0) {
      this.log.warn({ errors: errors.map(errorMessage) }, 'destroy left errors');
      throw new VmError(this.id, `destroy failed: ${errors.map(errorMessage).join('; ')}`);
    }
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.destroy();
  }

  /** Resolves when QEMU exits, with its exit result. */
  get processExited(): Promise<unknown> {
    return this.exited ?? Promise.resolve();
  }

  private async stopProcess(): Promise<void> {
    if (this.attachedPid !== undefined) return this.stopAttached(this.attachedPid);
    const child = this.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    if (this.qmpClient) {
      await Promise.race([
        this.qmpClient.execute('quit', undefined, { timeoutMs: QUIT_GRACE_MS }).catch(() => {}),
        new Promise((r) => setTimeout(r, QUIT_GRACE_MS)),
      ]);
    }
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGKILL');
      // setpriv execs QEMU, so the child pid is QEMU's own pid.
    }
    await Promise.race([this.exited, new Promise((r) => setTimeout(r, 5_000))]);
  }

  private async stopAttached(pid: number): Promise<void> {
    await this.qmpClient?.execute('quit', undefined, { timeoutMs: QUIT_GRACE_MS }).catch(() => {});
    const record = await readRecord(this.dir);
    if (record && qemuAlive(record, this.dir)) {
      await new Promise((r) => setTimeout(r, 100));
      if (qemuAlive(record, this.dir)) process.kill(pid, 'SIGKILL');
    }
    await Promise.race([this.exited, new Promise((r) => setTimeout(r, 5_000))]);
  }

  private async writeRecord(): Promise<void> {
    const record: VmRecord = {
      vmId: this.id,
      config: this.config,
      accel: this.accel,
      qemuPid: this.child!.pid!,
      qemuStartTime: processStartTime(this.child!.pid!) ?? '',
      owner: this.config.detached ? null : selfRecord(),
      createdAt: new Date().toISOString(),
      restoredFrom: this.restoredFrom,
    };
    await writeFile(this.files.record, JSON.stringify(record, null, 2));
  }

  async qemuLogTail(): Promise<string> {
    const text = await readFile(this.files.qemuLog, 'utf8').catch(() => '');
    const tail = text.trim().split('\n').slice(-5).join(' | ');
    return tail ? `QEMU said: ${tail}` : `see ${this.files.serialLog}`;
  }
}

export async function createOverlay(backing: string, overlay: string, sizeBytes: number): Promise<void> {
  await execa('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', backing, '-F', 'qcow2', overlay, String(sizeBytes)]);
}


