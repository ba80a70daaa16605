/**
 * Container metadata from real runtimes: a podman container, a plain
 * containerd container (ctr), and a Kubernetes pod through containerd's CRI,
 * with the real sensor naming the containers from the kernel's cgroup
 * records. containerd is a private one started here. Needs root.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ContainerMetadataStore, type ContainerMetadata } from '../../src/containers/metadata';
import { CriClient } from '../../src/containers/cri';
import { fieldsLookup, MetadataDir, withMetadata } from '../../src/containers/metadata-dir';
import { compileFilter } from '../../src/filter';
import { Sensor } from '../../src/sensor/sensor';
import {
  CriDriver,
  ctrRun,
  importPauseImage,
  importTestImage,
  removeCgroupParents,
  removeSavedImages,
  startContainerd,
  type Containerd,
  type PodSpec,
} from '../helpers/containerd';
import { EventLog } from '../helpers/events';
import { podman, startContainer, TEST_IMAGE, uniqueName, type Container } from '../helpers/podman';

const CGROUP_ROOT = fs.existsSync('/sys/fs/cgroup/unified/cgroup.procs') ? '/sys/fs/cgroup/unified' : '/sys/fs/cgroup';

async function learned(store: ContainerMetadataStore, id: string): Promise<ContainerMetadata> {
  const deadline = Date.now() + 20_000;
  for (;;) {
    const md = await store.lookup(id);
    if (md) return md;
    if (Date.now() > deadline) throw new Error(`no metadata for ${id} within 20 s: ${JSON.stringify(store.stats())}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** What `ctr snapshots mounts` says containerd mounted for a container, independent of Amber's parser. */
function overlayOptions(mountCommand: string): Record<string, string> {
  const opts = /-o (\S+)/.exec(mountCommand)?.[1] ?? '';
  return Object.fromEntries(opts.split(',').map((o) => [o.split('=')[0], o.slice(o.indexOf('=') + 1)]));
}

describe('container metadata on real runtimes', () => {
  const log = new EventLog();
  let sensor: Sensor | undefined;
  let store: ContainerMetadataStore | undefined;
  let cd: Containerd | undefined;
  let cri: CriDriver | undefined;
  const cleanups: Array<() => Promise<void>> = [];
  const cgroupParent = `/amber-e2e-${process.pid}`;
  const t0 = Date.now();
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'amber-md-data-'));

  beforeAll(async () => {
    cd = await startContainerd();
    store = new ContainerMetadataStore({
      cgroupRoot: CGROUP_ROOT,
      containerd: { socket: cd.socket, stateDir: cd.stateDir },
      criSockets: [cd.socket],
      dir: await MetadataDir.open(dataDir, { create: true }),
    });
    sensor = await Sensor.start({ types: ['exec'], containers: store }, log.push);
  });

  afterAll(async () => {
    for (const c of cleanups.reverse()) await c().catch((err) => console.error(err));
    await cri?.close();
    await sensor?.stop();
    store?.close();
    await cd?.stop();
    removeCgroupParents(cgroupParent);
    removeSavedImages();
    fs.rmSync(dataDir, { recursive: true, force: true });
  });

  it('podman: runtime, name, image and image ID, init pid, start time and overlay root', async () => {
    const name = uniqueName('amber-md');
    const c: Container = await startContainer(name);
    cleanups.push(() => c.remove());
    const md = await learned(store!, c.id);
    const inspect = JSON.parse(await podman('inspect', c.id))[0];
    const driver = inspect.GraphDriver.Data;
    expect(md).toEqual({
      containerId: c.id,
      runtime: 'podman',
      name,
      image: TEST_IMAGE,
      imageId: inspect.Image,
      startedAt: md.startedAt,
      initPid: c.pid,
      overlay: { upperdir: driver.UpperDir, lowerdirs: md.overlay?.lowerdirs, workdir: driver.WorkDir },
      pod: null,
      removedAt: '',
      errors: [],
    });
    // mountinfo names the layers by c/storage's short links (l/<id> -> ../<layer>/diff); podman resolves them
    expect(md.overlay!.lowerdirs.map((d) => fs.realpathSync(d))).toEqual(driver.LowerDir.split(':'));
    // the init process starts between podman's "created" and "started" (runc start returns later); the kernel counts in 10 ms ticks
    expect(Date.parse(md.startedAt)).toBeGreaterThanOrEqual(Date.parse(inspect.Created) - 10);
    expect(Date.parse(md.startedAt)).toBeLessThanOrEqual(Date.parse(inspect.State.StartedAt) + 10);
    expect(fs.existsSync(md.overlay!.upperdir)).toBe(true);

    await c.remove();
    await new Promise((r) => setTimeout(r, 500));
    const after = store!.get(c.id);
    expect(after?.name).toBe(name); // kept after the container is gone
    expect(after?.removedAt).not.toBe('');
  });

  it('containerd (ctr): runtime, name, image and digest, init pid and the overlay snapshot', async () => {
    const image = await importTestImage(cd!, 'default');
    const id = randomBytes(32).toString('hex');
    const c = await ctrRun(cd!, 'default', image, id, 'sleep', '3600');
    cleanups.push(() => c.remove());
    const md = await learned(store!, id);
    const digest = (await cd!.ctr('default', 'images', 'list')).split('\n').find((l) => l.startsWith(image + ' '))?.split(/\s+/)[2];
    const mounts = overlayOptions(await cd!.ctr('default', 'snapshots', '--snapshotter', 'overlayfs', 'mounts', '/x', id));
    expect(digest).toMatch(/^sha256:[0-9a-f]{64}$/);
    expect(md).toEqual({
      containerId: id,
      runtime: 'containerd',
      name: id,
      image,
      imageId: digest,
      startedAt: md.startedAt,
      initPid: c.pid,
      overlay: { upperdir: mounts.upperdir, lowerdirs: mounts.lowerdir.split(':'), workdir: mounts.workdir },
      pod: null,
      removedAt: '',
      errors: [],
    });
    expect(Date.parse(md.startedAt)).toBeGreaterThanOrEqual(t0 - 20);
    expect(Date.parse(md.startedAt)).toBeLessThanOrEqual(Date.now());
  });

  it("CRI: a pod's container carries the pod's name, namespace, UID and labels, also after the pod is removed", async () => {
    await importPauseImage(cd!);
    const image = await importTestImage(cd!, 'k8s.io');
    cri = new CriDriver(cd!.socket);
    const uid = randomUUID();
    const spec: PodSpec = {
      name: uniqueName('shop-web'),
      namespace: 'amber-e2e',
      uid,
      labels: { app: 'web', 'tier.example.com/level': 'front' },
      cgroupParent: `${cgroupParent}/pod${uid}`,
    };
    const podId = await cri.runPod(spec);
    const containerId = await cri.runContainer(podId, spec, 'nginx', image, ['sleep', '3600']);

    // the sensor saw the container's process by the container's ID
    const [exec] = await log.waitFor('exec', (e) => e.containerId === containerId && e.comm === 'sleep');
    const md = await learned(store!, exec.containerId);
    const pod = { name: spec.name, namespace: 'amber-e2e', uid, labels: spec.labels };
    expect(md).toMatchObject({ containerId, runtime: 'containerd', name: 'nginx', image, pod, removedAt: '', errors: [] });
    expect(md.imageId).toMatch(/^sha256:[0-9a-f]{64}$/);
    expect(md.initPid).toBeGreaterThan(0);
    expect(md.overlay?.upperdir.startsWith(cd!.dir + '/root/')).toBe(true);
    // the pod's own sandbox (pause) container is known as the pod's too
    const sandbox = await learned(store!, podId);
    expect(sandbox).toMatchObject({ runtime: 'containerd', name: '', pod, errors: [] });

    await cri.removeContainer(containerId);
    await cri.removePod(podId);
    // the runtime forgot them; Amber still knows
    const client = new CriClient(cd!.socket, 2000);
    try {
      expect(await client.container(containerId)).toBeNull();
      // what names the runtime of a container in kubelet's cgroupfs layout (no runtime in its cgroup path)
      expect(await client.version()).toMatchObject({ runtimeName: 'containerd', runtimeApiVersion: 'v1' });
    } finally {
      client.close();
    }
    await new Promise((r) => setTimeout(r, 500));
    expect(store!.get(containerId)).toMatchObject({ name: 'nginx', pod });
    expect(store!.get(containerId)?.removedAt).not.toBe('');

    // a copy of the data dir, queried offline, joins the same to the container's events
    await store!.flush();
    const copy = path.join(dataDir, 'copy');
    fs.mkdirSync(copy);
    execFileSync('cp', ['-a', path.join(dataDir, 'containers'), copy]);
    const { byId, errors } = await (await MetadataDir.open(copy)).readAll();
    expect(errors).toEqual([]);
    expect(withMetadata(exec, (id) => byId.get(id))).toMatchObject({
      containerId,
      comm: 'sleep',
      runtime: 'containerd',
      container: 'nginx',
      image,
      pod: spec.name,
      namespace: 'amber-e2e',
    });
    expect(byId.get(containerId)?.pod?.labels).toEqual(spec.labels);
    // --pod / --namespace / --image select the pod's events by the copy's metadata
    const lookup = fieldsLookup((id) => byId.get(id));
    expect(compileFilter({ pod: spec.name, namespace: 'amber-e2e' }, lookup)(exec)).toBe(true);
    expect(compileFilter({ image: image.split('/').pop()! }, lookup)(exec)).toBe(true);
    expect(compileFilter({ pod: spec.name, namespace: 'default' }, lookup)(exec)).toBe(false);
    expect(compileFilter({ pod: 'shop-web' }, lookup)(exec)).toBe(false);
    expect(compileFilter({ namespace: 'amber-e2e' })(exec)).toBe(false); // no metadata: no match
  });
});
