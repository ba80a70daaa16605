/**
 * Real podman containers for the e2e tests, from a busybox image built here
 * (no registry is reachable). podman reads a private containers.conf (runc,
 * no default ulimits: crun rejects hybrid cgroups, and we lack
 * CAP_SYS_RESOURCE) so the system's configuration is left alone.
 */
export { ensureTestImage, podman, podmanEnv, TEST_IMAGE, uniqueName } from '../../bench/podman';
import { ensureTestImage, podman } from '../../bench/podman';

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
