/**
 * A private containerd for the e2e tests: its own socket, root and state
 * under a temporary directory and its own config, so the machine's
 * containerd (if any) is never touched. It serves both plain containers
 * (driven with `ctr`) and the CRI (driven with @grpc/grpc-js: no crictl is
 * packaged). Images come from local tarballs: the busybox image of
 * test/helpers/podman.ts and a pause image built here from a tiny static
 * binary. Everything is stopped and removed by ID.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import * as grpc from '@grpc/grpc-js';
import { loadService, unaryCall, unixTarget } from '../../src/containers/cri';
import { ensureTestImage, podman, TEST_IMAGE } from './podman';

const run = promisify(execFile);

export const PAUSE_IMAGE = 'localhost/amber-test-pause:1';

export interface Containerd {
  dir: string;
  socket: string;
  /** containerd's `state` (the bundles live in <stateDir>/io.containerd.runtime.v2.task/<ns>/<id>). */
  stateDir: string;
  pid: number;
  ctr(namespace: string, ...args: string[]): Promise<string>;
  /** Stops containerd (by its pid), unmounts what is left under its dirs, removes them. */
  stop(): Promise<void>;
}

async function waitFor(what: string, ms: number, check: () => boolean): Promise<void> {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`${what}: not within ${ms} ms`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

/** Mount points under dir, deepest first (from our own mountinfo). */
function mountsUnder(dir: string): string[] {
  const unescape = (s: string) => s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
  return fs
    .readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .map((line) => unescape(line.split(' ')[4] ?? ''))
    .filter((mp) => mp.startsWith(dir + '/'))
    .sort((a, b) => b.length - a.length);
}

/** Directories containerd 1.6's shims and runc make under /run/containerd whatever the config says. */
const FIXED_RUN_DIRS = ['/run/containerd/s', '/run/containerd/fifo', '/run/containerd/runc', '/run/containerd'];

export async function startContainerd(): Promise<Containerd> {
  const preexisting = FIXED_RUN_DIRS.filter((d) => fs.existsSync(d));
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'amber-containerd-'));
  const socket = path.join(dir, 'containerd.sock');
  const stateDir = path.join(dir, 'state');
  const cniDir = path.join(dir, 'cni');
  fs.mkdirSync(cniDir);
  const config = path.join(dir, 'config.toml');
  fs.writeFileSync(
    config,
    [
      'version = 2',
      `root = "${dir}/root"`,
      `state = "${stateDir}"`,
      '[grpc]',
      `  address = "${socket}"`,
      '[ttrpc]',
      `  address = "${socket}.ttrpc"`,
      '[plugins."io.containerd.grpc.v1.cri"]',
      // we lack CAP_SYS_RESOURCE: containers may not lower their OOM score below ours
      '  restrict_oom_score_adj = true',
      `  sandbox_image = "${PAUSE_IMAGE}"`,
      '  [plugins."io.containerd.grpc.v1.cri".containerd]',
      '    snapshotter = "overlayfs"',
      '    default_runtime_name = "runc"',
      '    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]',
      '      runtime_type = "io.containerd.runc.v2"',
      // host-network pods only: no CNI config is needed, the dirs just exist
      '  [plugins."io.containerd.grpc.v1.cri".cni]',
      `    bin_dir = "${cniDir}"`,
      `    conf_dir = "${cniDir}"`,
      '',
    ].join('\n'),
  );
  const log = fs.openSync(path.join(dir, 'containerd.log'), 'a');
  const child: ChildProcess = spawn('containerd', ['--config', config], { stdio: ['ignore', log, log] });
  fs.closeSync(log);
  let exited = false;
  child.once('exit', () => (exited = true));
  const ctr = async (namespace: string, ...args: string[]): Promise<string> => {
    try {
      const { stdout } = await run('ctr', ['--address', socket, '--namespace', namespace, ...args], { maxBuffer: 16 << 20 });
      return stdout.trim();
    } catch (err) {
      const e = err as { stderr?: string; message: string };
      throw new Error(`ctr ${args.join(' ')} failed: ${e.stderr?.trim() || e.message}`);
    }
  };
  const stop = async (): Promise<void> => {
    if (!exited) {
      const gone = new Promise<void>((resolve) => child.once('exit', () => resolve()));
      child.kill('SIGTERM');
      await gone;
    }
    for (const mp of mountsUnder(dir)) await run('umount', [mp]).catch(() => run('umount', ['-l', mp]));
    fs.rmSync(dir, { recursive: true, force: true });
    // only those this test made, and only when empty (another containerd may use them meanwhile)
    for (const d of FIXED_RUN_DIRS) if (!preexisting.includes(d)) removeEmptyDirs(d);
  };
  try {
    await waitFor('containerd to listen', 20_000, () => {
      if (exited) throw new Error(`containerd exited: ${fs.readFileSync(path.join(dir, 'containerd.log'), 'utf8').slice(-2000)}`);
      return fs.existsSync(socket);
    });
    await ctr('default', 'version');
  } catch (err) {
    await stop();
    throw err;
  }
  return { dir, socket, stateDir, pid: child.pid!, ctr, stop };
}

const tarballs = new Map<string, string>();

/** An image saved from podman's store to a tarball once per test process. */
async function savedImage(image: string): Promise<string> {
  let tar = tarballs.get(image);
  if (tar === undefined || !fs.existsSync(tar)) {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'amber-image-'));
    tar = path.join(dir, 'image.tar');
    await podman('save', '--format', 'oci-archive', '-o', tar, image);
    tarballs.set(image, tar);
  }
  return tar;
}

export function removeSavedImages(): void {
  for (const tar of tarballs.values()) fs.rmSync(path.dirname(tar), { recursive: true, force: true });
  tarballs.clear();
}

/** The busybox test image in a containerd namespace; returns its reference. */
export async function importTestImage(cd: Containerd, namespace: string): Promise<string> {
  await ensureTestImage();
  await cd.ctr(namespace, 'images', 'import', await savedImage(TEST_IMAGE));
  return TEST_IMAGE;
}

/**
 * The pod sandbox image: a static binary that pauses until SIGTERM/SIGINT,
 * built FROM scratch with podman, imported into the CRI's namespace (k8s.io).
 */
export async function importPauseImage(cd: Containerd): Promise<string> {
  if ((await podman('images', '-q', PAUSE_IMAGE)) === '') {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'amber-pause-'));
    try {
      fs.writeFileSync(
        path.join(dir, 'pause.c'),
        '#include <signal.h>\n#include <unistd.h>\nstatic void quit(int s) { (void)s; _exit(0); }\n' +
          'int main(void) { signal(SIGTERM, quit); signal(SIGINT, quit); for (;;) pause(); }\n',
      );
      await run('gcc', ['-static', '-Os', '-o', path.join(dir, 'pause'), path.join(dir, 'pause.c')]);
      fs.writeFileSync(path.join(dir, 'Containerfile'), 'FROM scratch\nCOPY pause /pause\nENTRYPOINT ["/pause"]\n');
      await podman('build', '-t', PAUSE_IMAGE, dir);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  }
  await cd.ctr('k8s.io', 'images', 'import', await savedImage(PAUSE_IMAGE));
  return PAUSE_IMAGE;
}

/** A plain containerd container (ctr run -d); remove() kills and deletes its task and the container with its snapshot. */
export async function ctrRun(
  cd: Containerd,
  namespace: string,
  image: string,
  id: string,
  ...cmd: string[]
): Promise<{ id: string; pid: number; remove(): Promise<void> }> {
  await cd.ctr(namespace, 'run', '--detach', '--snapshotter', 'overlayfs', image, id, ...cmd);
  const tasks = await cd.ctr(namespace, 'tasks', 'list');
  const line = tasks.split('\n').find((l) => l.startsWith(id + ' '));
  const pid = Number(line?.trim().split(/\s+/)[1]);
  return {
    id,
    pid,
    remove: async () => {
      await cd.ctr(namespace, 'tasks', 'kill', '--signal', 'SIGKILL', id).catch(() => {});
      await cd.ctr(namespace, 'tasks', 'delete', '--force', id).catch(() => {});
      await cd.ctr(namespace, 'containers', 'delete', id);
    },
  };
}

export interface PodSpec {
  name: string;
  namespace: string;
  uid: string;
  labels: Record<string, string>;
  cgroupParent: string;
}

/** Drives containerd's CRI like a kubelet would, for a host-network pod. */
export class CriDriver {
  private readonly client: grpc.Client;
  private readonly pods: string[] = [];
  private readonly containers: string[] = [];

  constructor(socket: string) {
    const Service = loadService(path.join(__dirname, 'cri-test.proto'), 'runtime.v1.RuntimeService');
    this.client = new Service(unixTarget(socket), grpc.credentials.createInsecure());
  }

  /** Images are local, but starting a sandbox on a loaded machine still takes seconds. */
  private call<T>(method: string, request: object): Promise<T> {
    return unaryCall<T>(this.client, method, request, 60_000);
  }

  static sandboxConfig(spec: PodSpec): object {
    return {
      metadata: { name: spec.name, uid: spec.uid, namespace: spec.namespace, attempt: 0 },
      // a host-network pod shares the host's UTS namespace: no hostname of its own
      labels: spec.labels,
      linux: { cgroupParent: spec.cgroupParent, securityContext: { namespaceOptions: { network: 'NODE' } } },
    };
  }

  async runPod(spec: PodSpec): Promise<string> {
    const res = await this.call<{ podSandboxId: string }>('RunPodSandbox', { config: CriDriver.sandboxConfig(spec) });
    this.pods.push(res.podSandboxId);
    return res.podSandboxId;
  }

  async runContainer(podId: string, spec: PodSpec, name: string, image: string, command: string[]): Promise<string> {
    const res = await this.call<{ containerId: string }>('CreateContainer', {
      podSandboxId: podId,
      config: { metadata: { name, attempt: 0 }, image: { image }, command },
      sandboxConfig: CriDriver.sandboxConfig(spec),
    });
    this.containers.push(res.containerId);
    await this.call('StartContainer', { containerId: res.containerId });
    return res.containerId;
  }

  async removeContainer(id: string): Promise<void> {
    await this.call('StopContainer', { containerId: id, timeout: 0 });
    await this.call('RemoveContainer', { containerId: id });
    this.containers.splice(this.containers.indexOf(id), 1);
  }

  async removePod(id: string): Promise<void> {
    await this.call('StopPodSandbox', { podSandboxId: id });
    await this.call('RemovePodSandbox', { podSandboxId: id });
    this.pods.splice(this.pods.indexOf(id), 1);
  }

  /** Removes what is left (containers, then pods), by ID, and closes the client. */
  async close(): Promise<void> {
    for (const id of [...this.containers]) await this.removeContainer(id).catch(() => {});
    for (const id of [...this.pods]) await this.removePod(id).catch(() => {});
    this.client.close();
  }
}

/** Removes the empty directories under and including dir, deepest first, never following symlinks; returns how many went. */
function removeEmptyDirs(dir: string): number {
  let removed = 0;
  let entries: fs.Dirent[];
  try {
    entries = fs.readdirSync(dir, { withFileTypes: true });
  } catch {
    return 0;
  }
  for (const e of entries) if (e.isDirectory()) removed += removeEmptyDirs(path.join(dir, e.name));
  try {
    fs.rmdirSync(dir);
    removed++;
  } catch {
    // not empty (a cgroup still in use, a file someone keeps), or gone
  }
  return removed;
}

/**
 * Removes the cgroup directories under a test's cgroup_parent (runc creates
 * the parents and leaves them; kubelet would remove them), in every v1
 * hierarchy and the unified one on hybrid hosts, or the root on pure v2 ones.
 * Only empty directories go: rmdir never removes a cgroup in use.
 */
export function removeCgroupParents(parent: string): void {
  const relative = parent.replace(/^\/+/, '');
  if (relative === '' || relative.includes('..')) throw new Error(`not a test cgroup parent: ${parent}`);
  for (const hierarchy of ['', ...fs.readdirSync('/sys/fs/cgroup')]) {
    const dir = path.join('/sys/fs/cgroup', hierarchy, relative);
    try {
      if (!fs.lstatSync(dir).isDirectory()) continue;
    } catch {
      continue;
    }
    removeEmptyDirs(dir);
  }
}
