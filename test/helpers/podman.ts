/**
 * Real podman containers for the e2e tests, from a busybox image built here
 * (no registry is reachable). podman reads a private containers.conf (runc,
 * no default ulimits: crun rejects hybrid cgroups, and we lack
 * CAP_SYS_RESOURCE) so the system's configuration is left alone.
 */
import { execFile, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

export const TEST_IMAGE = 'localhost/amber-test-busybox:1';
const BUSYBOX_APPLETS = ['sh', 'ls', 'cat', 'cp', 'sleep', 'echo', 'true', 'false', 'nslookup', 'wget', 'kill', 'mkdir', 'rm', 'ln', 'chmod'];

/** The tests' private podman configuration, in the project's own build dir (gitignored): nothing left in /tmp. */
const CONF_DIR = path.resolve(__dirname, '../../build/test-podman');
const CONF = path.join(CONF_DIR, 'containers.conf');
let confWritten = false;

/** The environment podman runs with here: the private containers.conf. */
export function podmanEnv(): NodeJS.ProcessEnv {
  if (!confWritten) {
    fs.mkdirSync(CONF_DIR, { recursive: true, mode: 0o700 });
    // written whole under a name of this process's own, then renamed: test files run in parallel
    const tmp = `${CONF}.${process.pid}`;
    fs.writeFileSync(tmp, '[containers]\ndefault_ulimits = []\n[engine]\nruntime = "runc"\n');
    fs.renameSync(tmp, CONF);
    confWritten = true;
  }
  return { ...process.env, CONTAINERS_CONF: CONF };
}

export async function podman(...args: string[]): Promise<string> {
  try {
    const { stdout } = await run('podman', args, { env: podmanEnv(), maxBuffer: 16 << 20 });
    return stdout.trim();
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    throw new Error(`podman ${args.join(' ')} failed: ${e.stderr?.trim() || e.message}`);
  }
}

/** Builds the image once (podman import of a busybox-static rootfs). */
export async function ensureTestImage(): Promise<string> {
  const existing = await podman('images', '-q', TEST_IMAGE);
  if (existing) return TEST_IMAGE;
  const busybox = '/bin/busybox';
  if (!fs.existsSync(busybox)) throw new Error('busybox-static is not installed (/bin/busybox): run bash scripts/ensure.sh --test');
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'amber-rootfs-'));
  try {
    for (const dir of ['bin', 'tmp', 'etc', 'proc', 'sys', 'dev']) fs.mkdirSync(path.join(root, dir));
    fs.chmodSync(path.join(root, 'tmp'), 0o1777);
    fs.copyFileSync(busybox, path.join(root, 'bin/busybox'));
    fs.chmodSync(path.join(root, 'bin/busybox'), 0o755);
    for (const applet of BUSYBOX_APPLETS) fs.symlinkSync('busybox', path.join(root, 'bin', applet));
    fs.writeFileSync(path.join(root, 'etc/passwd'), 'root:x:0:0:root:/:/bin/sh\n');
    execFileSync('sh', ['-c', `tar -C "${root}" -c . | podman import --change 'CMD ["/bin/sh"]' - ${TEST_IMAGE}`], {
      env: podmanEnv(),
      stdio: 'pipe',
    });
  } finally {
    fs.rmSync(root, { recursive: true, force: true });
  }
  return TEST_IMAGE;
}

export interface Container {
  id: string;
  /** Host pid of the container's first process. */
  pid: number;
  exec(...cmd: string[]): Promise<string>;
  remove(): Promise<void>;
}

/** Starts a long-running container (sleep), returns its full ID. */
export async function startContainer(name: string): Promise<Container> {
  const image = await ensureTestImage();
  const id = await podman('run', '-d', '--name', name, image, 'sleep', '3600');
  const pid = Number(await podman('inspect', '-f', '{{.State.Pid}}', id));
  return {
    id,
    pid,
    exec: (...cmd: string[]) => podman('exec', id, ...cmd),
    remove: async () => {
      await podman('rm', '-f', '-t', '0', id);
    },
  };
}

/** Runs a short-lived container to completion; returns its ID and output. */
export async function runOnce(name: string, ...cmd: string[]): Promise<{ id: string; output: string }> {
  const image = await ensureTestImage();
  const id = await podman('create', '--name', name, image, ...cmd);
  try {
    await podman('start', id);
    await podman('wait', id);
    return { id, output: await podman('logs', id) };
  } finally {
    await podman('rm', '-f', '-t', '0', id);
  }
}

export function uniqueName(prefix: string): string {
  return `${prefix}-${process.pid}-${Math.random().toString(36).slice(2, 8)}`;
}
