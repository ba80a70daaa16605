import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ContainerMetadataStore, type ContainerMetadata } from '../../src/containers/metadata';
import { CONTAINERS_DIR, MetadataDir, withMetadata } from '../../src/containers/metadata-dir';

const ID = 'a'.repeat(64);
const OTHER = 'b'.repeat(64);

function metadata(id: string, over: Partial<ContainerMetadata> = {}): ContainerMetadata {
  return {
    containerId: id,
    runtime: 'containerd',
    name: 'nginx',
    image: 'docker.io/library/nginx:1.25',
    imageId: 'sha256:' + 'c'.repeat(64),
    startedAt: '2026-11-23T21:00:00.000Z',
    initPid: 4242,
    overlay: { upperdir: '/u', lowerdirs: ['/l1', '/l2'], workdir: '/w' },
    pod: { name: 'web-7d4b', namespace: 'shop', uid: '0b4f3d2e-1c5a-4b6d-8e7f-9a0b1c2d3e4f', labels: { app: 'web' } },
    removedAt: '',
    errors: [],
    ...over,
  };
}

let tmp: string;
beforeEach(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'amber-mddir-'));
});
afterEach(() => fs.rmSync(tmp, { recursive: true, force: true }));

describe('container metadata files in the data dir', () => {
  it('writes one owner-only file per container and reads it back exactly, also from a copy of the data dir', async () => {
    const dir = await MetadataDir.open(tmp, { create: true });
    await dir.write(metadata(ID));
    await dir.write(metadata(OTHER, { pod: null, runtime: 'podman', overlay: null }));
    await dir.write(metadata(ID, { removedAt: '2026-11-23T22:00:00.000Z' })); // replaced in place
    expect(fs.statSync(path.join(tmp, CONTAINERS_DIR)).mode & 0o777).toBe(0o700);
    expect(fs.statSync(path.join(tmp, CONTAINERS_DIR, `${ID}.json`)).mode & 0o777).toBe(0o600);
    expect(fs.readdirSync(path.join(tmp, CONTAINERS_DIR)).sort()).toEqual([`${ID}.json`, `${OTHER}.json`]);

    const copy = path.join(tmp, 'copy');
    fs.mkdirSync(copy);
    execFileSync('cp', ['-a', path.join(tmp, CONTAINERS_DIR), copy]);
    const offline = await MetadataDir.open(copy);
    const { byId, errors } = await offline.readAll();
    expect(errors).toEqual([]);
    expect(byId.get(ID)).toEqual(metadata(ID, { removedAt: '2026-11-23T22:00:00.000Z' }));
    expect(byId.get(OTHER)?.runtime).toBe('podman');
    expect(await offline.read('c'.repeat(64))).toBeUndefined();
    expect(await offline.read('../x')).toBeUndefined();
  });

  it('never follows a planted link: the containers dir itself, or a container file', async () => {
    fs.mkdirSync(path.join(tmp, 'elsewhere'));
    fs.symlinkSync(path.join(tmp, 'elsewhere'), path.join(tmp, CONTAINERS_DIR));
    await expect(MetadataDir.open(tmp, { create: true })).rejects.toThrow('is not a directory (a symlink or file is not followed)');

    const data = path.join(tmp, 'data');
    const dir = await MetadataDir.open(data, { create: true });
    const victim = path.join(tmp, 'victim');
    fs.writeFileSync(victim, 'keep me');
    fs.symlinkSync(victim, path.join(data, CONTAINERS_DIR, `${ID}.json`));
    await expect(dir.read(ID)).rejects.toMatchObject({ code: 'ELOOP' });
    await dir.write(metadata(ID));
    expect(fs.readFileSync(victim, 'utf8')).toBe('keep me');
    expect(fs.lstatSync(path.join(data, CONTAINERS_DIR, `${ID}.json`)).isFile()).toBe(true);
    await expect(dir.write(metadata('../../etc/passwd'))).rejects.toThrow('not a container ID: "../../etc/passwd"');
  });

  it('reports bad files by name and still reads the good ones', async () => {
    const dir = await MetadataDir.open(tmp, { create: true });
    const d = path.join(tmp, CONTAINERS_DIR);
    await dir.write(metadata(ID));
    fs.writeFileSync(path.join(d, `${'1'.repeat(64)}.json`), '{"containerId":');
    fs.writeFileSync(path.join(d, `${'2'.repeat(64)}.json`), JSON.stringify(metadata(OTHER)));
    fs.writeFileSync(path.join(d, `${'3'.repeat(64)}.json`), JSON.stringify({ ...metadata('3'.repeat(64)), initPid: -1 }));
    fs.writeFileSync(path.join(d, `${'4'.repeat(64)}.json`), Buffer.alloc(300 * 1024, 0x20));
    execFileSync('mkfifo', [path.join(d, `${'5'.repeat(64)}.json`)]);
    fs.writeFileSync(path.join(d, 'notes.txt'), 'ignored');
    const { byId, errors } = await dir.readAll();
    expect([...byId.keys()]).toEqual([ID]);
    expect(errors.sort()).toEqual(
      [
        `${path.join(d, '1'.repeat(64) + '.json')}: not JSON: Unexpected end of JSON input`,
        `${path.join(d, '2'.repeat(64) + '.json')} holds the metadata of ${OTHER}`,
        `${path.join(d, '3'.repeat(64) + '.json')}: not container metadata: Too small: expected number to be >=0 at initPid`,
        `${path.join(d, '4'.repeat(64) + '.json')} is larger than 262144 bytes`,
        `${path.join(d, '5'.repeat(64) + '.json')} is not a regular file`,
      ].sort(),
    );
  });

  it('prunes the files of containers gone before a time', async () => {
    const dir = await MetadataDir.open(tmp, { create: true });
    await dir.write(metadata(ID, { removedAt: '2026-11-01T00:00:00.000Z' }));
    await dir.write(metadata(OTHER)); // still running
    expect(await dir.pruneRemovedBefore(new Date('2026-11-02T00:00:00Z'))).toBe(1);
    expect([...(await dir.readAll()).byId.keys()]).toEqual([OTHER]);
  });

  it('the store writes a container when learned and again when it goes', async () => {
    const dir = await MetadataDir.open(tmp, { create: true });
    fs.mkdirSync(path.join(tmp, 'cgroup', `docker/${ID}`), { recursive: true });
    const store = new ContainerMetadataStore({ cgroupRoot: path.join(tmp, 'cgroup'), procRoot: path.join(tmp, 'proc'), pidWaitMs: 0, dir });
    try {
      store.onContainer({ containerId: ID, runtime: 'docker', podUid: '', cgroupPath: `/docker/${ID}` });
      await store.lookup(ID);
      await store.flush();
      expect(await dir.read(ID)).toEqual(store.get(ID));
      store.onContainerGone(ID);
      await store.flush();
      expect((await dir.read(ID))?.removedAt).toBe(store.get(ID)?.removedAt);
      expect((await dir.read(ID))?.removedAt).not.toBe('');
    } finally {
      store.close();
    }
  });
});

describe('withMetadata', () => {
  const known = new Map([[ID, metadata(ID)]]);
  const lookup = (id: string) => known.get(id);

  it("joins the container's name, image, runtime, pod and namespace to its events", () => {
    const ev = { type: 'exec', containerId: ID, pid: 7 };
    expect(withMetadata(ev, lookup)).toEqual({
      type: 'exec',
      containerId: ID,
      pid: 7,
      runtime: 'containerd',
      container: 'nginx',
      image: 'docker.io/library/nginx:1.25',
      pod: 'web-7d4b',
      namespace: 'shop',
    });
    expect(ev).toEqual({ type: 'exec', containerId: ID, pid: 7 }); // not modified
  });

  it('leaves host events and unknown containers as they are (the same object)', () => {
    const host = { containerId: '' };
    const unknown = { containerId: OTHER };
    expect(withMetadata(host, lookup)).toBe(host);
    expect(withMetadata(unknown, lookup)).toBe(unknown);
    known.set(OTHER, metadata(OTHER, { pod: null, name: 'db', runtime: 'podman' }));
    expect(withMetadata(unknown, lookup)).toMatchObject({ container: 'db', runtime: 'podman', pod: '', namespace: '' });
  });
});
