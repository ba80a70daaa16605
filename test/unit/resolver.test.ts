import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { ContainerResolver, REMOVED_GRACE_MS, RESCAN_INTERVAL_MS } from '../../src/containers/resolver';

const PODMAN_ID = '1'.repeat(64);
const CONTAINERD_ID = '2'.repeat(64);
const LATER_ID = '3'.repeat(64);
const OUTSIDE_ID = '4'.repeat(64);
const HYBRID_ID = '5'.repeat(64);
const POD_UID = '0b4f3d2e-1c5a-4b6d-8e7f-9a0b1c2d3e4f';
const POD_SLICE = `kubepods-burstable-pod${POD_UID.replace(/-/g, '_')}.slice`;
const POD_CGROUP = `/kubepods.slice/kubepods-burstable.slice/${POD_SLICE}/cri-containerd-${CONTAINERD_ID}.scope`;
const OTHER_MNTNS = 4026532999;

let tmp: string;
let cgroupRoot: string;
let procRoot: string;
let hostMntns: number;
let clock: number;
let resolver: ContainerResolver;

/** A cgroup directory in the fake tree, with a control file like the real ones; returns its inode (= cgroup id). */
function makeCgroup(relative: string): number {
  const dir = path.join(cgroupRoot, relative);
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, 'cgroup.procs'), '');
  return fs.lstatSync(dir).ino;
}

function writeProcCgroup(pid: number, text: string): void {
  fs.mkdirSync(path.join(procRoot, String(pid)), { recursive: true });
  fs.writeFileSync(path.join(procRoot, String(pid), 'cgroup'), text);
}

function newResolver(maxEntries?: number): ContainerResolver {
  resolver = new ContainerResolver({ cgroupRoot, procRoot, maxEntries, now: () => clock });
  return resolver;
}

beforeEach(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'amber-resolver-'));
  cgroupRoot = path.join(tmp, 'cgroup');
  procRoot = path.join(tmp, 'proc');
  fs.mkdirSync(cgroupRoot);
  // The host's mount namespace is the inode of <procRoot>/1/ns/mnt.
  fs.mkdirSync(path.join(procRoot, '1', 'ns'), { recursive: true });
  fs.writeFileSync(path.join(procRoot, '1', 'ns', 'mnt'), '');
  hostMntns = fs.statSync(path.join(procRoot, '1', 'ns', 'mnt')).ino;
  clock = 1_000_000;
});

afterEach(() => {
  resolver?.close();
  fs.rmSync(tmp, { recursive: true, force: true });
});

describe('ContainerResolver', () => {
  it("takes the host mount namespace from kthreadd (pid 2) when init's cannot be read", async () => {
    fs.rmSync(path.join(procRoot, '1'), { recursive: true });
    fs.mkdirSync(path.join(procRoot, '2', 'ns'), { recursive: true });
    fs.writeFileSync(path.join(procRoot, '2', 'ns', 'mnt'), '');
    const kthreadd = fs.statSync(path.join(procRoot, '2', 'ns', 'mnt')).ino;
    const docker = makeCgroup(`docker/${LATER_ID}`);
    const host = makeCgroup('user.slice');
    const logs: string[] = [];
    resolver = new ContainerResolver({ cgroupRoot, procRoot, now: () => clock, log: (_obj, msg) => logs.push(msg) });
    await resolver.init();
    expect(resolver.containerId(docker, 10, kthreadd)).toBe(LATER_ID);
    // a host process in a non-container cgroup: no /proc/<pid>/cgroup lookup is needed to say ""
    expect(resolver.containerId(host, 11, kthreadd)).toBe('');
    expect(resolver.stats().misses).toBe(0);
    expect(logs).toEqual([]);
  });

  it('finds containers that existed before init by the inode of their cgroup', async () => {
    const podmanCgroup = makeCgroup(`libpod_parent/libpod-${PODMAN_ID}`);
    makeCgroup(`libpod_parent/libpod-conmon-${PODMAN_ID}`);
    const containerdCgroup = makeCgroup(POD_CGROUP);
    const hostCgroup = makeCgroup('system.slice/sshd.service');
    newResolver();
    await resolver.init();

    expect(resolver.containerId(podmanCgroup, 100, OTHER_MNTNS)).toBe(PODMAN_ID);
    expect(resolver.containerId(containerdCgroup, 101, OTHER_MNTNS)).toBe(CONTAINERD_ID);
    expect(resolver.containerId(hostCgroup, 102, hostMntns)).toBe('');
    expect(resolver.containerId(fs.lstatSync(cgroupRoot).ino, 1, hostMntns)).toBe('');
    expect(resolver.info(CONTAINERD_ID)).toEqual({
      containerId: CONTAINERD_ID,
      runtime: 'containerd',
      podUid: POD_UID,
      cgroupPath: POD_CGROUP,
    });
    expect(resolver.info(PODMAN_ID)).toEqual({
      containerId: PODMAN_ID,
      runtime: 'podman',
      podUid: '',
      cgroupPath: `/libpod_parent/libpod-${PODMAN_ID}`,
    });
    expect(resolver.info('f'.repeat(64))).toBeUndefined();
    // root, libpod_parent, libpod-, libpod-conmon-, 4 kubepods levels, system.slice, sshd.service
    expect(resolver.stats()).toEqual({ entries: 10, hits: 4, misses: 0, rescans: 0 });
  });

  it('learns cgroups made after init from the kernel records', async () => {
    newResolver();
    await resolver.init();
    const later = makeCgroup(`machine.slice/libpod-${LATER_ID}.scope`);
    resolver.onCgroup(later, `/machine.slice/libpod-${LATER_ID}.scope`, false);
    expect(resolver.containerId(later, 200, OTHER_MNTNS)).toBe(LATER_ID);
    expect(resolver.info(LATER_ID)?.runtime).toBe('podman');
    expect(resolver.stats().misses).toBe(0);
  });

  it('names a short-lived container from its records though its directory is gone', async () => {
    newResolver();
    await resolver.init();
    const id = 987654321;
    resolver.onCgroup(id, `/libpod_parent/libpod-${LATER_ID}`, false);
    resolver.onCgroup(id, `/libpod_parent/libpod-${LATER_ID}`, true);
    expect(resolver.containerId(id, 300, OTHER_MNTNS)).toBe(LATER_ID);
  });

  it('keeps a removed cgroup for the grace period, then forgets it', async () => {
    const cgroup = makeCgroup(`docker/${LATER_ID}`);
    newResolver();
    await resolver.init();
    fs.rmSync(path.join(cgroupRoot, 'docker', LATER_ID), { recursive: true });
    resolver.onCgroup(cgroup, `/docker/${LATER_ID}`, true);

    clock += REMOVED_GRACE_MS - 1;
    expect(resolver.containerId(cgroup, 400, OTHER_MNTNS)).toBe(LATER_ID);
    expect(resolver.info(LATER_ID)?.cgroupPath).toBe(`/docker/${LATER_ID}`);

    clock += 2;
    const entriesBefore = resolver.stats().entries;
    expect(resolver.containerId(cgroup, 400, hostMntns)).toBe('');
    expect(resolver.stats().entries).toBe(entriesBefore - 1);
    expect(resolver.stats().misses).toBe(1);
    expect(resolver.info(LATER_ID)).toBeUndefined();
  });

  it('is bounded by maxEntries, least recently used first', async () => {
    newResolver(4);
    await resolver.init(); // learns the root: 1 entry
    const ids = [1001, 1002, 1003, 1004];
    ids.forEach((id, i) => resolver.onCgroup(id, `/docker/${String(i).repeat(64)}`, false));
    expect(resolver.stats().entries).toBe(4);
    // 1001 used recently: 1002 is now the least recent one
    expect(resolver.containerId(1001, 1, hostMntns)).toBe('0'.repeat(64));
    resolver.onCgroup(1005, `/docker/${'9'.repeat(64)}`, false);
    expect(resolver.stats().entries).toBe(4);
    expect(resolver.containerId(1001, 1, hostMntns)).toBe('0'.repeat(64));
    expect(resolver.containerId(1005, 1, hostMntns)).toBe('9'.repeat(64));
    const missesBefore = resolver.stats().misses;
    expect(resolver.containerId(1002, 1, hostMntns)).toBe('');
    expect(resolver.stats().misses).toBe(missesBefore + 1);
  });

  it('does not follow symlinks in the tree', async () => {
    const outside = path.join(tmp, 'outside', `libpod-${OUTSIDE_ID}`);
    fs.mkdirSync(outside, { recursive: true });
    fs.mkdirSync(path.join(outside, 'child'));
    const outsideIno = fs.lstatSync(outside).ino;
    const outsideChildIno = fs.lstatSync(path.join(outside, 'child')).ino;
    makeCgroup('machine.slice');
    fs.symlinkSync(outside, path.join(cgroupRoot, 'machine.slice', `libpod-${OUTSIDE_ID}.scope`));
    fs.symlinkSync(path.join(tmp, 'outside'), path.join(cgroupRoot, 'link'));
    newResolver();
    await resolver.init();

    expect(resolver.stats().entries).toBe(2); // root, machine.slice
    clock += RESCAN_INTERVAL_MS; // lets the misses below rescan at once
    expect(resolver.containerId(outsideIno, 500, hostMntns)).toBe('');
    expect(resolver.containerId(outsideChildIno, 500, hostMntns)).toBe('');
    expect(resolver.info(OUTSIDE_ID)).toBeUndefined();
    // the rescan the misses asked for does not follow them either
    await resolver.idle();
    expect(resolver.stats().rescans).toBe(1);
    expect(resolver.containerId(outsideIno, 500, hostMntns)).toBe('');
    expect(resolver.info(OUTSIDE_ID)).toBeUndefined();
  });

  // root reads any directory: only meaningful without CAP_DAC_OVERRIDE
  it('rejects init when the root cannot be read', async () => {
    resolver = new ContainerResolver({ cgroupRoot: path.join(tmp, 'missing'), procRoot });
    await expect(resolver.init()).rejects.toThrow(/ENOENT/);
  });

  it('answers "" on a miss, then learns the id by a rate-limited rescan', async () => {
    newResolver();
    await resolver.init();
    const later = makeCgroup(`system.slice/docker-${LATER_ID}.scope`);

    expect(resolver.containerId(later, 600, hostMntns)).toBe('');
    expect(resolver.containerId(later, 600, hostMntns)).toBe('');
    expect(resolver.stats()).toMatchObject({ misses: 2, rescans: 0 });
    // within a second of the init walk: the rescan waits
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect(resolver.stats().rescans).toBe(0);

    clock += RESCAN_INTERVAL_MS;
    await vi.waitFor(() => expect(resolver.containerId(later, 600, hostMntns)).toBe(LATER_ID), { timeout: 5000 });
    expect(resolver.stats().rescans).toBe(1);
  });

  it('remembers an id no rescan can find, so it does not rescan again', async () => {
    newResolver();
    await resolver.init();
    clock += RESCAN_INTERVAL_MS;
    expect(resolver.containerId(424242, 700, hostMntns)).toBe('');
    await resolver.idle();
    clock += RESCAN_INTERVAL_MS;
    expect(resolver.containerId(424242, 700, hostMntns)).toBe('');
    await resolver.idle();
    expect(resolver.stats()).toMatchObject({ misses: 1, rescans: 1 });
  });

  it('starts the grace period of a cgroup whose rmdir record was lost when a rescan misses it', async () => {
    const lost = makeCgroup(`docker/${LATER_ID}`);
    newResolver();
    await resolver.init();
    fs.rmSync(path.join(cgroupRoot, 'docker', LATER_ID), { recursive: true });
    clock += RESCAN_INTERVAL_MS;
    expect(resolver.containerId(555555, 1, hostMntns)).toBe(''); // any miss rescans
    await resolver.idle();
    expect(resolver.containerId(lost, 1, hostMntns)).toBe(LATER_ID);
    clock += REMOVED_GRACE_MS + 1;
    expect(resolver.containerId(lost, 1, hostMntns)).toBe('');
    expect(resolver.info(LATER_ID)).toBeUndefined();
  });

  it('falls back to /proc/<pid>/cgroup by mount namespace when the v2 cgroup names no container', async () => {
    // hybrid host: the runtime left the container in containerd.service on v2
    const serviceCgroup = makeCgroup('system.slice/containerd.service');
    writeProcCgroup(800, `4:memory:/docker/${HYBRID_ID}\n1:name=systemd:/docker/${HYBRID_ID}\n0::/system.slice/containerd.service\n`);
    writeProcCgroup(801, '4:memory:/system.slice/containerd.service\n0::/system.slice/containerd.service\n');
    newResolver();
    await resolver.init();

    expect(resolver.containerId(serviceCgroup, 800, OTHER_MNTNS)).toBe(HYBRID_ID);
    expect(resolver.info(HYBRID_ID)).toEqual({
      containerId: HYBRID_ID,
      runtime: 'docker',
      podUid: '',
      cgroupPath: `/docker/${HYBRID_ID}`,
    });
    // containerd itself, in the host's mount namespace: no read, ""
    expect(resolver.containerId(serviceCgroup, 801, hostMntns)).toBe('');

    // cached by mount namespace: the file is not read again
    fs.rmSync(path.join(procRoot, '800'), { recursive: true });
    expect(resolver.containerId(serviceCgroup, 800, OTHER_MNTNS)).toBe(HYBRID_ID);

    // negative answers are cached too, briefly
    writeProcCgroup(802, '0::/system.slice/containerd.service\n');
    expect(resolver.containerId(serviceCgroup, 802, OTHER_MNTNS + 1)).toBe('');
    writeProcCgroup(802, `4:memory:/docker/${LATER_ID}\n0::/system.slice/containerd.service\n`);
    expect(resolver.containerId(serviceCgroup, 802, OTHER_MNTNS + 1)).toBe('');
    clock += 1_001;
    expect(resolver.containerId(serviceCgroup, 802, OTHER_MNTNS + 1)).toBe(LATER_ID);
  });

  it('uses the fallback on a miss when the process is in another mount namespace', async () => {
    newResolver();
    await resolver.init();
    const later = makeCgroup(`system.slice/docker-${LATER_ID}.scope`);
    writeProcCgroup(900, `0::/system.slice/docker-${LATER_ID}.scope\n`);
    expect(resolver.containerId(later, 900, OTHER_MNTNS)).toBe(LATER_ID);
    expect(resolver.stats().misses).toBe(1);
  });

  it("names a host-cgroup process in a container's mount namespace by that container, never the host's namespace", async () => {
    const podmanCgroup = makeCgroup('user.slice/podman.scope'); // where runc runs for `podman exec`
    const container = makeCgroup(`machine.slice/libpod-${LATER_ID}.scope`);
    writeProcCgroup(700, '0::/user.slice/podman.scope\n'); // runc after setns, before joining the container's cgroup
    writeProcCgroup(701, '0::/user.slice/podman.scope\n');
    newResolver();
    await resolver.init();
    // before any event of the container: /proc says host
    expect(resolver.containerId(podmanCgroup, 700, OTHER_MNTNS)).toBe('');
    // an event of the container teaches its mount namespace, over the cached negative answer
    expect(resolver.containerId(container, 42, OTHER_MNTNS)).toBe(LATER_ID);
    expect(resolver.containerId(podmanCgroup, 700, OTHER_MNTNS)).toBe(LATER_ID);
    // and keeps it past the /proc TTLs
    clock += 120_000;
    expect(resolver.containerId(podmanCgroup, 701, OTHER_MNTNS)).toBe(LATER_ID);
    // a container sharing the host's mount namespace names nothing there
    expect(resolver.containerId(container, 43, hostMntns)).toBe(LATER_ID);
    expect(resolver.containerId(podmanCgroup, 701, hostMntns)).toBe('');
    // the namespace is forgotten with the container's cgroup
    resolver.onCgroup(container, `/machine.slice/libpod-${LATER_ID}.scope`, true);
    clock += 60_001;
    resolver.onCgroup(makeCgroup('other'), '/other', false); // prunes
    expect(resolver.containerId(podmanCgroup, 701, OTHER_MNTNS)).toBe('');
  });
});
