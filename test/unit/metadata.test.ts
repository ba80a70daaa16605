/**
 * The metadata store on state trees written here (podman's and containerd's
 * layouts as this machine's podman 4.3 and containerd 1.6 write them), a
 * private /proc, and real sockets that hang. The real runtimes are in
 * test/e2e/metadata.test.ts.
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ContainerMetadataStore, type MetadataOptions } from '../../src/containers/metadata';
import { ContainerResolver, type ContainerInfo } from '../../src/containers/resolver';

const PODMAN_ID = 'a'.repeat(64);
const CTR_ID = 'b'.repeat(64);
const POD_UID = '0b4f3d2e-1c5a-4b6d-8e7f-9a0b1c2d3e4f';
const ROOT_LINE =
  '79 51 0:40 / / rw,relatime - overlay overlay rw,lowerdir=/s/l/A:/s/l/B,upperdir=/s/d\\040x/diff,workdir=/s/d\\040x/work';

let tmp: string;
let opts: MetadataOptions;
let store: ContainerMetadataStore | undefined;
const servers: net.Server[] = [];
const sockets: net.Socket[] = [];

function write(file: string, text: string): void {
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.writeFileSync(file, text);
}

/** A process in the private /proc with its mountinfo and stat. */
function fakeProcess(pid: number, mountinfo: string, comm = 'sleep'): void {
  write(path.join(tmp, 'proc', String(pid), 'comm'), comm + '\n');
  write(path.join(tmp, 'proc', String(pid), 'mountinfo'), mountinfo);
  write(path.join(tmp, 'proc', String(pid), 'stat'), `${pid} (sleep) S 1 ${pid} ${pid} 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 250 0 0`);
}

function podmanInfo(): ContainerInfo {
  return { containerId: PODMAN_ID, runtime: 'podman', podUid: '', cgroupPath: `/libpod_parent/libpod-${PODMAN_ID}` };
}

function writePodmanState(): void {
  const g = path.join(tmp, 'graph');
  write(
    path.join(g, 'overlay-containers/containers.json'),
    JSON.stringify([
      { id: 'c'.repeat(64), names: ['other'] },
      {
        id: PODMAN_ID,
        names: ['web-1'],
        image: 'f'.repeat(64),
        metadata: JSON.stringify({ 'image-name': 'localhost/web:2', 'image-id': 'f'.repeat(64), name: 'web-1' }),
      },
    ]),
  );
  write(path.join(tmp, 'run', 'overlay-containers', PODMAN_ID, 'userdata/pidfile'), '4242');
  fakeProcess(4242, `22 1 254:0 / / rw - ext4 /dev/vda rw\n${ROOT_LINE}\n`);
}

beforeEach(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'amber-metadata-'));
  write(path.join(tmp, 'proc/uptime'), '1000.00 1500.00\n');
  fs.mkdirSync(path.join(tmp, 'cgroup'));
  opts = {
    cgroupRoot: path.join(tmp, 'cgroup'),
    procRoot: path.join(tmp, 'proc'),
    podman: { graphRoot: path.join(tmp, 'graph'), runRoot: path.join(tmp, 'run') },
    containerd: { socket: path.join(tmp, 'containerd.sock'), stateDir: path.join(tmp, 'containerd') },
    criSockets: [path.join(tmp, 'cri.sock')],
    callTimeoutMs: 200,
    pidWaitMs: 300,
  };
});

afterEach(async () => {
  store?.close();
  store = undefined;
  for (const s of sockets.splice(0)) s.destroy();
  await Promise.all(servers.splice(0).map((s) => new Promise((resolve) => s.close(resolve))));
  fs.rmSync(tmp, { recursive: true, force: true });
});

describe('container metadata', () => {
  it("learns a podman container from c/storage's containers.json, its pidfile and /proc", async () => {
    writePodmanState();
    store = new ContainerMetadataStore(opts);
    store.onContainer(podmanInfo());
    expect(store.get(PODMAN_ID)).toBeUndefined(); // learned in the background
    const before = Date.now();
    const md = await store.lookup(PODMAN_ID);
    const after = Date.now();
    // booted 1000 s before the lookup, started 2.5 s after boot
    expect(Date.parse(md!.startedAt)).toBeGreaterThanOrEqual(before - 1_000_000 + 2500);
    expect(Date.parse(md!.startedAt)).toBeLessThanOrEqual(after - 1_000_000 + 2500);
    expect(md).toEqual({
      containerId: PODMAN_ID,
      runtime: 'podman',
      name: 'web-1',
      image: 'localhost/web:2',
      imageId: 'f'.repeat(64),
      startedAt: md!.startedAt,
      initPid: 4242,
      overlay: { upperdir: '/s/d x/diff', lowerdirs: ['/s/l/A', '/s/l/B'], workdir: '/s/d x/work' },
      pod: null,
      removedAt: '',
      errors: [],
    });
    // a container created after the list was read (and cached) makes a fresh read
    const later = '9'.repeat(64);
    const listFile = path.join(tmp, 'graph/overlay-containers/containers.json');
    write(listFile, JSON.stringify([...JSON.parse(fs.readFileSync(listFile, 'utf8')), { id: later, names: ['web-2'] }]));
    write(path.join(tmp, 'run', 'overlay-containers', later, 'userdata/pidfile'), '4242');
    store.onContainer({ ...podmanInfo(), containerId: later });
    expect((await store.lookup(later))?.name).toBe('web-2');

    store.onContainerGone(PODMAN_ID);
    expect(store.get(PODMAN_ID)?.removedAt).not.toBe('');
    expect(store.get(PODMAN_ID)?.name).toBe('web-1'); // kept after it is gone
  });

  it('keeps the container ID and says what failed when state files are FIFOs, symlinks or garbage', async () => {
    const g = path.join(tmp, 'graph/overlay-containers');
    fs.mkdirSync(g, { recursive: true });
    execFileSync('mkfifo', [path.join(g, 'containers.json')]);
    const userdata = path.join(tmp, 'run/overlay-containers', PODMAN_ID, 'userdata');
    fs.mkdirSync(userdata, { recursive: true });
    write(path.join(tmp, 'elsewhere'), '1');
    fs.symlinkSync(path.join(tmp, 'elsewhere'), path.join(userdata, 'pidfile'));
    store = new ContainerMetadataStore(opts);
    const t0 = performance.now();
    store.onContainer(podmanInfo());
    const md = await store.lookup(PODMAN_ID);
    expect(performance.now() - t0).toBeLessThan(5000);
    expect(md).toMatchObject({ containerId: PODMAN_ID, runtime: 'podman', name: '', image: '', initPid: 0, overlay: null });
    expect(md?.errors).toEqual([
      `podman state: ${path.join(g, 'containers.json')} is not a regular file`,
      'init pid: no process found within 300 ms',
    ]);

    fs.rmSync(path.join(g, 'containers.json'));
    write(path.join(g, 'containers.json'), '[{"id": "' + PODMAN_ID + '", "names": [7], "metadata": "{not json"}]');
    const other = 'd'.repeat(64);
    store.onContainer({ ...podmanInfo(), containerId: other });
    store.onContainer({ ...podmanInfo(), containerId: PODMAN_ID }); // already known: not learned again
    expect((await store.lookup(other))?.errors).toEqual(['init pid: no process found within 300 ms']);
    expect(store.stats()).toEqual({ entries: 2, pending: 0, dropped: 0 });
  });

  it("finds the init pid in cgroup.procs when the runtime keeps no pidfile, once the process has joined, skipping runc's own", async () => {
    const cgroupPath = `/default/${CTR_ID}`;
    const procs = path.join(tmp, 'cgroup', cgroupPath, 'cgroup.procs');
    write(procs, '');
    fakeProcess(776, '', 'runc:[1:CHILD]');
    fakeProcess(777, ROOT_LINE + '\n');
    store = new ContainerMetadataStore({ ...opts, pidWaitMs: 2000 });
    store.onContainer({ containerId: CTR_ID, runtime: 'containerd', podUid: '', cgroupPath });
    setTimeout(() => fs.writeFileSync(procs, '776\n777\n778\n'), 150);
    const md = await store.lookup(CTR_ID);
    expect(md).toMatchObject({ initPid: 777, overlay: { upperdir: '/s/d x/diff' }, name: '', image: '' });
    expect(md?.errors).toEqual([]);
  });

  it("reads the CRI plugin's annotations from containerd's bundle; a CRI socket that never answers costs only its deadline", async () => {
    const bundle = path.join(tmp, 'containerd/io.containerd.runtime.v2.task/k8s.io', CTR_ID);
    write(path.join(bundle, 'init.pid'), '4243');
    write(
      path.join(bundle, 'config.json'),
      JSON.stringify({
        annotations: {
          'io.kubernetes.cri.container-type': 'container',
          'io.kubernetes.cri.sandbox-id': 'e'.repeat(64),
          'io.kubernetes.cri.sandbox-name': 'web-7d4b',
          'io.kubernetes.cri.sandbox-namespace': 'shop',
          'io.kubernetes.cri.container-name': 'nginx',
          'io.kubernetes.cri.image-name': 'docker.io/library/nginx:1.25',
        },
      }),
    );
    fakeProcess(4243, ROOT_LINE);
    // accepts and never answers (not even the HTTP/2 preface)
    const hung = net.createServer((s) => sockets.push(s));
    servers.push(hung);
    await new Promise<void>((resolve) => hung.listen(path.join(tmp, 'cri.sock'), resolve));
    store = new ContainerMetadataStore(opts);
    const t0 = performance.now();
    store.onContainer({ containerId: CTR_ID, runtime: 'unknown', podUid: POD_UID, cgroupPath: `/kubepods/pod${POD_UID}/${CTR_ID}` });
    const md = await store.lookup(CTR_ID);
    expect(performance.now() - t0).toBeLessThan(3000);
    expect(md).toMatchObject({
      runtime: 'containerd',
      name: 'nginx',
      image: 'docker.io/library/nginx:1.25',
      initPid: 4243,
      pod: { name: 'web-7d4b', namespace: 'shop', uid: POD_UID, labels: {} },
    });
    expect(md?.errors).toHaveLength(1);
    expect(md?.errors[0]).toMatch(new RegExp(`^cri: ${path.join(tmp, 'cri.sock')}: .*(Deadline|no answer)`));
  });

  it('bounds the cache: the least recently learned container is forgotten first', async () => {
    store = new ContainerMetadataStore({ ...opts, maxEntries: 2, pidWaitMs: 0 });
    const ids = ['1', '2', '3'].map((c) => c.repeat(64));
    for (const id of ids) {
      store.onContainer({ containerId: id, runtime: 'docker', podUid: '', cgroupPath: `/docker/${id}` });
      await store.lookup(id);
    }
    expect(ids.map((id) => store!.get(id) !== undefined)).toEqual([false, true, true]);
  });

  it('is told of each container once by the resolver, and of its cgroup going', async () => {
    const seen: string[] = [];
    const resolver = new ContainerResolver({
      cgroupRoot: opts.cgroupRoot,
      procRoot: opts.procRoot,
      onContainer: (info) => seen.push(`new ${info.runtime} ${info.containerId.slice(0, 4)} ${info.cgroupPath}`),
      onContainerGone: (id) => seen.push(`gone ${id.slice(0, 4)}`),
    });
    fs.mkdirSync(path.join(opts.cgroupRoot, `libpod_parent/libpod-${PODMAN_ID}`), { recursive: true });
    await resolver.init();
    resolver.onCgroup(90001, `/default/${CTR_ID}`, false);
    resolver.onCgroup(90002, `/default/${CTR_ID}/sub`, false); // the same container's sub-cgroup
    resolver.onCgroup(90002, `/default/${CTR_ID}/sub`, true);
    resolver.onCgroup(90001, `/default/${CTR_ID}`, true);
    resolver.close();
    expect(seen).toEqual([
      `new podman aaaa /libpod_parent/libpod-${PODMAN_ID}`,
      `new containerd bbbb /default/${CTR_ID}`,
      'gone bbbb',
    ]);
  });
});
