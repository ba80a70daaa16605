/**
 * Drift with the real sensor and real podman containers: the detector
 * subscribed to the pipeline, container metadata from the store, the default
 * rules. Each case asserts the finding's exact fields (or its absence).
 * Needs root.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ContainerMetadataStore } from '../../src/containers/metadata';
import { startDetector, type DetectorHandle } from '../../src/detect/detector';
import { loadRules } from '../../src/detect/rules';
import { Pipeline } from '../../src/pipeline/pipeline';
import type { AmberEvent, DriftEvent, ExecEvent } from '../../src/sensor/events';
import { Sensor } from '../../src/sensor/sensor';
import { podman, startContainer, TEST_IMAGE, uniqueName, type Container } from '../helpers/podman';

const CGROUP_ROOT = fs.existsSync('/sys/fs/cgroup/unified/cgroup.procs') ? '/sys/fs/cgroup/unified' : '/sys/fs/cgroup';
const DRIFT_IMAGE = 'localhost/amber-test-drift:1';
const BUSYBOX = fs.readFileSync('/bin/busybox');
const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');
const BUSYBOX_SHA = sha256(BUSYBOX);

/**
 * The busybox test image plus, in the image itself: /usr/local/bin/cat (a real copy of busybox, not a
 * link: the file the "modified in place" case writes) and /usr/bin/memfd-exec (static).
 */
async function ensureDriftImage(): Promise<void> {
  if (await podman('images', '-q', DRIFT_IMAGE)) return;
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'amber-drift-rootfs-'));
  try {
    for (const dir of ['bin', 'tmp', 'etc', 'proc', 'sys', 'dev', 'usr/bin', 'usr/local/bin']) fs.mkdirSync(path.join(root, dir), { recursive: true });
    fs.chmodSync(path.join(root, 'tmp'), 0o1777);
    fs.copyFileSync('/bin/busybox', path.join(root, 'bin/busybox'));
    fs.chmodSync(path.join(root, 'bin/busybox'), 0o755);
    for (const applet of ['sh', 'cat', 'cp', 'sleep', 'chmod', 'printf', 'true', 'echo']) fs.symlinkSync('busybox', path.join(root, 'bin', applet));
    fs.copyFileSync('/bin/busybox', path.join(root, 'usr/local/bin/cat'));
    fs.chmodSync(path.join(root, 'usr/local/bin/cat'), 0o755);
    execFileSync('cc', ['-static', '-O2', '-o', path.join(root, 'usr/bin/memfd-exec'), path.join(__dirname, '..', 'helpers', 'memfd-exec.c')]);
    const tar = path.join(root, '..', `${path.basename(root)}.tar`);
    execFileSync('tar', ['-C', root, '-cf', tar, '.']);
    try {
      await podman('import', '--change', 'CMD ["/bin/sh"]', tar, DRIFT_IMAGE);
    } finally {
      fs.rmSync(tar, { force: true });
    }
  } finally {
    fs.rmSync(root, { recursive: true, force: true });
  }
}

describe('drift findings (real sensor, podman)', () => {
  const pipeline = new Pipeline();
  const events: AmberEvent[] = [];
  let sensor: Sensor | undefined;
  let store: ContainerMetadataStore | undefined;
  let detector: DetectorHandle | undefined;
  let c: Container | undefined;
  const name = uniqueName('amber-drift');
  const cleanups: Array<() => Promise<void>> = [];

  beforeAll(async () => {
    await ensureDriftImage();
    store = new ContainerMetadataStore({ cgroupRoot: CGROUP_ROOT });
    detector = startDetector({ pipeline, metadata: store, writableMounts: true, rules: loadRules(path.join(__dirname, '..', '..', 'rules', 'default.yaml')) });
    pipeline.addSink((batch) => events.push(...batch));
    sensor = await Sensor.start({ types: ['exec', 'fork', 'exit'], containers: store }, pipeline.publish);
    const id = await podman('run', '-d', '--name', name, DRIFT_IMAGE, 'sleep', '3600');
    c = { id, pid: Number(await podman('inspect', '-f', '{{.State.Pid}}', id)), exec: (...cmd) => podman('exec', id, ...cmd), remove: async () => void (await podman('rm', '-f', '-t', '0', id)) };
    cleanups.push(() => c!.remove());
    await store.lookup(id);
  }, 120_000);

  afterAll(async () => {
    for (const f of cleanups.reverse()) await f().catch((err) => console.error(err));
    await sensor?.stop();
    detector?.close();
    store?.close();
    pipeline.close();
  });

  const drifts = () => events.filter((e): e is DriftEvent => e.type === 'drift');
  const execs = () => events.filter((e): e is ExecEvent => e.type === 'exec');

  async function finding(match: (d: DriftEvent) => boolean, what: string): Promise<DriftEvent> {
    const deadline = Date.now() + 15_000;
    for (;;) {
      const found = drifts().filter(match);
      if (found.length === 1) return found[0];
      if (found.length > 1) throw new Error(`${found.length} findings for ${what}: ${JSON.stringify(found)}`);
      if (Date.now() > deadline) throw new Error(`no drift finding for ${what}; drift seen: ${JSON.stringify(drifts().map((d) => [d.containerId.slice(0, 12), d.path]))}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  /** Waits until the sensor delivered an exec matching, and the detector finished what it started. */
  async function execSeen(match: (e: ExecEvent) => boolean, what: string): Promise<ExecEvent> {
    const deadline = Date.now() + 15_000;
    for (;;) {
      const e = execs().find(match);
      if (e) {
        await new Promise((r) => setTimeout(r, 200)); // the detector's turn (setImmediate), then its async part
        await detector!.settled();
        return e;
      }
      if (Date.now() > deadline) throw new Error(`no exec for ${what}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  it('/bin/sh -c true from the image: no drift', async () => {
    const marker = `true-${Date.now()}`;
    await c!.exec('/bin/sh', '-c', `true ${marker}`);
    const sh = await execSeen((e) => e.containerId === c!.id && e.args.join(' ') === `/bin/sh -c true ${marker}`, 'sh -c true');
    expect(sh.upperLayer).toBe(false);
    expect(drifts().filter((d) => d.pid === sh.pid)).toEqual([]);
  });

  it('busybox copied to /tmp/x and run: upper-layer drift, created, with busybox SHA-256, metadata and ancestry', async () => {
    await c!.exec('/bin/sh', '-c', 'cp /bin/busybox /tmp/x && /tmp/x echo dropped; true');
    const d = await finding((x) => x.containerId === c!.id && x.path === '/tmp/x', '/tmp/x');
    const md = store!.get(c!.id)!;
    const startNs = Date.parse(md.startedAt) * 1e6;
    expect(d).toMatchObject({
      type: 'drift',
      comm: 'x',
      action: 'incident',
      rules: ['drift'],
      reason: 'upper-layer',
      subject: 'executable',
      path: '/tmp/x',
      change: 'created',
      imageFile: null,
      sha256: BUSYBOX_SHA,
      hashedBytes: BUSYBOX.length,
      hashError: '',
      exec: { filename: '/tmp/x', exePath: '/tmp/x', args: ['/tmp/x', 'echo', 'dropped'], script: '' },
      containerMetadata: { runtime: 'podman', name, image: DRIFT_IMAGE, imageId: md.imageId, startedAt: md.startedAt, pod: null },
    });
    if (process.env.AMBER_SHOW_FINDING) console.log(JSON.stringify(d, null, 2));
    // x ("applet not found") exits within a millisecond: usually before the sensor's batch reaches the detector
    expect(['exe', 'upperdir']).toContain(d.hashedFrom);
    expect(d.file!.size).toBe(BUSYBOX.length);
    expect(d.file!.mode & 0o777).toBe(0o755);
    expect(d.mtimeSinceStartNs).toBe(d.file!.mtime - startNs);
    expect(d.mtimeSinceStartNs!).toBeGreaterThan(0); // written after the container started
    expect(d.ancestry[0]).toEqual({ pid: d.pid, ppid: d.ppid, comm: 'x', exePath: '/tmp/x', args: ['/tmp/x', 'echo', 'dropped'] });
    expect(d.ancestry[1]).toMatchObject({ pid: d.ppid, comm: 'sh', exePath: '/bin/busybox', args: ['/bin/sh', '-c', 'cp /bin/busybox /tmp/x && /tmp/x echo dropped; true'] });
    // sh's parent is podman's (runc exec, conmon): outside the container, or gone
    expect(d.ancestry).toHaveLength(2);
  });

  it('an image binary modified in place and run: drift, "modified", with the image copy\'s facts', async () => {
    await c!.exec('/bin/sh', '-c', 'printf "\\0" >> /usr/local/bin/cat && /usr/local/bin/cat /etc/hostname >/dev/null');
    const d = await finding((x) => x.containerId === c!.id && x.path === '/usr/local/bin/cat', 'modified cat');
    expect(d).toMatchObject({
      reason: 'upper-layer',
      subject: 'executable',
      change: 'modified',
      sha256: sha256(Buffer.concat([BUSYBOX, Buffer.from([0])])),
      hashedBytes: BUSYBOX.length + 1,
      hashError: '',
      action: 'incident',
    });
    expect(['exe', 'upperdir']).toContain(d.hashedFrom);
    expect(d.file!.size).toBe(BUSYBOX.length + 1);
    expect(d.imageFile!.size).toBe(BUSYBOX.length);
    expect(d.imageFile!.mtime).toBeLessThan(d.file!.mtime);
  });

  it('a binary run from memfd: fileless drift with the hash of what ran', async () => {
    await c!.exec('/usr/bin/memfd-exec', 'sleep', '1');
    const d = await finding((x) => x.containerId === c!.id && x.reason === 'fileless', 'memfd');
    expect(d).toMatchObject({
      reason: 'fileless',
      subject: 'executable',
      path: '/memfd:amber-x (deleted)',
      change: 'fileless',
      imageFile: null,
      sha256: BUSYBOX_SHA,
      hashedBytes: BUSYBOX.length,
      hashError: '',
      hashedFrom: 'exe', // sleep 1 is still running: a memfd has no other copy
      exec: { exePath: '/memfd:amber-x (deleted)', args: ['sleep', '1'] },
      action: 'incident',
    });
  });

  it('a script dropped into /tmp and run through its shebang: drift on the script', async () => {
    const script = '#!/bin/sh\necho from-script\n';
    await c!.exec('/bin/sh', '-c', `printf '${script.replace(/\n/g, '\\n')}' > /tmp/s.sh && chmod +x /tmp/s.sh && /tmp/s.sh`);
    const d = await finding((x) => x.containerId === c!.id && x.path === '/tmp/s.sh', 'script');
    expect(d).toMatchObject({
      reason: 'upper-layer',
      subject: 'script',
      path: '/tmp/s.sh',
      change: 'created',
      sha256: sha256(Buffer.from(script)),
      hashedBytes: script.length,
      hashError: '',
      hashedFrom: 'script',
      exec: { exePath: '/bin/busybox', script: '/tmp/s.sh' },
      action: 'incident',
    });
    expect(d.file!.size).toBe(script.length);
  });

  it('with writableMounts, a binary written to a tmpfs after the start and run: writable-mount drift', async () => {
    const tmpName = uniqueName('amber-drift-tmpfs');
    const id = await podman('run', '-d', '--name', tmpName, '--tmpfs', '/scratch:rw,exec,size=16m', DRIFT_IMAGE, 'sleep', '3600');
    cleanups.push(async () => void (await podman('rm', '-f', '-t', '0', id)));
    await store!.lookup(id);
    await podman('exec', id, '/bin/sh', '-c', 'cp /bin/busybox /scratch/sleep && exec /scratch/sleep 2');
    const d = await finding((x) => x.containerId === id && x.path === '/scratch/sleep', 'tmpfs /scratch/sleep');
    expect(d).toMatchObject({
      reason: 'writable-mount',
      subject: 'executable',
      change: 'unknown',
      imageFile: null,
      sha256: BUSYBOX_SHA,
      hashedBytes: BUSYBOX.length,
      hashError: '',
      hashedFrom: 'exe',
      exec: { exePath: '/scratch/sleep', args: ['/scratch/sleep', '2'] },
      action: 'incident',
      containerMetadata: { name: tmpName },
    });
    expect(d.mtimeSinceStartNs!).toBeGreaterThan(0);
    // the image's own binaries in the same container are not drift
    expect(drifts().filter((x) => x.containerId === id)).toHaveLength(1);
  });

  it('a host process running a dropped binary: never drift', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'amber-host-drift-'));
    cleanups.push(async () => fs.rmSync(dir, { recursive: true, force: true }));
    const x = path.join(dir, 'x');
    fs.copyFileSync('/bin/busybox', x);
    fs.chmodSync(x, 0o755);
    const r = spawnSync(x, ['true']);
    const e = await execSeen((ev) => ev.exePath === x && ev.pid === r.pid, 'host exec');
    expect(e.containerId).toBe('');
    expect(drifts().filter((d) => d.containerId === '')).toEqual([]);
  });

  it('a short-lived container that drops, runs and exits: still a finding, hashed or "exited before hashing"', async () => {
    const shortName = uniqueName('amber-drift-short');
    const id = await podman('create', '--name', shortName, DRIFT_IMAGE, '/bin/sh', '-c', 'cp /bin/busybox /tmp/true && /tmp/true');
    cleanups.push(async () => void (await podman('rm', '-f', '-t', '0', id)));
    await podman('start', '--attach', id);
    const started = Date.parse(JSON.parse(await podman('inspect', id))[0].State.StartedAt);
    const finished = Date.parse(JSON.parse(await podman('inspect', id))[0].State.FinishedAt);
    const d = await finding((x) => x.containerId === id && x.path === '/tmp/true', 'short-lived /tmp/true');
    expect(d).toMatchObject({ reason: 'upper-layer', subject: 'executable', path: '/tmp/true', action: 'incident', comm: 'true' });
    if (d.sha256 === '') {
      // gone, and so was what the overlay told: recorded, not skipped
      expect(d).toMatchObject({ hashError: 'exited before hashing', hashedFrom: '', hashedBytes: 0, file: null });
    } else {
      expect(d).toMatchObject({ sha256: BUSYBOX_SHA, hashedBytes: BUSYBOX.length, hashError: '' });
      expect(['exe', 'upperdir']).toContain(d.hashedFrom);
    }
    console.log(`short-lived container (ran ${finished - started} ms as podman reports it): ${d.hashedFrom || d.hashError}`);
  });
});
