/**
 * Real podman containers for the tests and benches, from a busybox image built
 * here (no registry is reachable). podman reads a private containers.conf
 * (runc, no default ulimits: crun rejects hybrid cgroups, and we lack
 * CAP_SYS_RESOURCE) so the system's configuration is left alone.
 */
import { execFile, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

/** The checkout this file is in (bench/ from the tests, dist/bench/ when built). */
function projectRoot(): string {
  let dir = __dirname;
  while (!fs.existsSync(path.join(dir, 'package.json'))) {
    const up = path.dirname(dir);
    if (up === dir) throw new Error(`no package.json above ${__dirname}`);
    dir = up;
  }
  return dir;
}

export const TEST_IMAGE = 'localhost/amber-test-busybox:1';
const BUSYBOX_APPLETS = ['sh', 'ls', 'cat', 'cp', 'sleep', 'echo', 'true', 'false', 'nslookup', 'wget', 'kill', 'mkdir', 'rm', 'ln', 'chmod'];

/** The tests' private podman configuration, in the project's own build dir (gitignored): nothing left in /tmp. */
const CONF_DIR = path.join(projectRoot(), 'build', 'test-podman');
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

/** A container name of this process's own. */
export function uniqueName(prefix: string): string {
  return `${prefix}-${process.pid}-${Math.random().toString(36).slice(2, 8)}`;
}
