/**
 * Evidence bundles end to end on disk: a bundle with an artifact of every kind
 * written by BundleWriter and signed, checked by the built `amber verify` (and
 * by openssl), tampered with in each way verify must catch, and shown by
 * `amber inspect`.
 */
import { execFile } from 'node:child_process';
import { generateKeyPairSync } from 'node:crypto';
import { constants as C, promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { promisify } from 'node:util';
import { Packr } from 'msgpackr';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BundleWriter, cleanIncompleteBundles, listBundles, type FinishedBundle, type ManifestFields } from '../../src/incident/bundle';
import type { ContainerFacts, ExposureFacts } from '../../src/incident/facts-types';
import { KEYS_DIR, loadOrCreateSigningKey, PRIVATE_KEY_FILE, PUBLIC_KEY_FILE, type SigningKey } from '../../src/incident/signing';
import { TarWriter } from '../../src/incident/tar';
import { verifyBundle } from '../../src/incident/verify';
import type { AmberEvent, DriftEvent } from '../../src/sensor/events';
import { amber } from '../helpers/agent';
import { writeCore } from '../helpers/core';
import { CONTAINER_A, connectEvent, dnsEvent, execEvent, exitEvent, forkEvent, openEvent, T0, tempDir } from '../helpers/buffer-events';

const execFileP = promisify(execFile);
const MS = 1e6;
const CREATED_MS = Date.UTC(2024, 4, 1, 12, 0, 5);

const trigger = {
  ...execEvent(T0 + 3000 * MS, { pid: 4711, tid: 4711, ppid: 4700, comm: 'x' }),
  type: 'drift',
  action: 'incident',
  rules: ['drift'],
  reason: 'upper-layer',
  subject: 'executable',
  path: '/tmp/x',
  change: 'created',
  file: { size: 10, mode: 0o100755, mtime: T0, ctime: T0 },
  mtimeSinceStartNs: 1e9,
  ctimeSinceStartNs: 1e9,
  imageFile: null,
  sha256: '3d9f2889d6782537624a4e1a10e68a2ddd53e0ee8bac02676f27308f42ec6bf6',
  hashedBytes: 10,
  hashError: '',
  hashedFrom: 'exe',
  exec: { filename: '/tmp/x', exePath: '/tmp/x', args: ['/tmp/x', '-c', 'evil'], script: '' },
  ancestry: [],
  container: null,
} as unknown as DriftEvent;

/** The frozen window: 30 events before the trigger, the trigger, 30 after (one per 100 ms). */
const events: AmberEvent[] = [];
for (let i = 0; i < 30; i++) events.push(openEvent(T0 + i * 100 * MS, { pid: 4700, comm: 'sh', path: `/etc/file${i}`, flagNames: ['O_RDONLY'], ret: 3 }));
events.push(execEvent(T0 + 2999 * MS, { pid: 4711, ppid: 4700, comm: 'x', filename: '/tmp/x', exePath: '/tmp/x', args: ['/tmp/x', '-c', 'evil'], upperLayer: true }));
events.push(trigger);
events.push(connectEvent(T0 + 3001 * MS, { pid: 4711, comm: 'x', daddr: '203.0.113.7', dport: 4444, ret: 0 }));
events.push(dnsEvent(T0 + 3002 * MS, { pid: 4711, comm: 'x', name: 'evil.example', answers: [{ type: 'A', data: '203.0.113.7' }] }));
events.push(forkEvent(T0 + 3003 * MS, { pid: 4711, comm: 'x', childPid: 4712 }));
for (let i = 0; i < 26; i++) events.push(openEvent(T0 + (3100 + i * 100) * MS, { pid: 4712, comm: 'x', path: `/var/loot${i}`, flagNames: ['O_WRONLY', 'O_CREAT'], ret: 4 }));
events.push(exitEvent(T0 + 6000 * MS, { pid: 4712, comm: 'x', signal: 9 }));
const stored = events.map((e) => JSON.parse(JSON.stringify(e)) as AmberEvent);

const containerFacts: ContainerFacts = {
  metadata: {
    containerId: CONTAINER_A,
    runtime: 'podman',
    name: 'web',
    image: 'docker.io/library/nginx:1.25',
    imageId: 'sha256:abc',
    startedAt: '2024-05-01T11:00:00.000Z',
    initPid: 4600,
    overlay: null,
    pod: { name: 'web-7f9', namespace: 'shop', uid: 'u-1', labels: {} },
    removedAt: '',
    errors: [],
  },
  tree: [
    {
      pid: 4600,
      ppid: 4590,
      comm: 'nginx',
      exePath: '/usr/sbin/nginx',
      args: ['nginx', '-g', 'daemon off;'],
      children: [
        {
          pid: 4700,
          ppid: 4600,
          comm: 'sh',
          exePath: '/bin/sh',
          args: ['/bin/sh'],
          children: [{ pid: 4711, ppid: 4700, comm: 'x', exePath: '/tmp/x', args: ['/tmp/x', '-c', 'evil'], children: [] }],
        },
        { pid: 4601, ppid: 4600, comm: 'nginx', exePath: '/usr/sbin/nginx', args: ['nginx: worker process'], children: [] },
      ],
    },
  ],
};

const exposureFacts: ExposureFacts = {
  pid: 4711,
  capabilities: { effective: ['CAP_CHOWN', 'CAP_NET_RAW'], permitted: ['CAP_CHOWN', 'CAP_NET_RAW'], bounding: ['CAP_CHOWN', 'CAP_NET_RAW'], inheritable: [], ambient: [] },
  privileged: false,
  seccomp: 'filter',
  noNewPrivs: false,
  hostNamespaces: { pid: false, net: true, ipc: false, uts: false, mnt: false, user: false, cgroup: false },
  sensitiveMounts: [{ path: '/var/run/docker.sock', source: '/run/docker.sock', reason: 'container runtime socket', writable: true }],
  serviceAccountToken: { mounted: true, path: '/var/run/secrets/kubernetes.io/serviceaccount/token' },
};

const fields: ManifestFields = {
  createdAt: new Date(CREATED_MS).toISOString(),
  node: 'node-1',
  trigger: { kind: 'drift', rule: 'drift', reason: 'upper-layer executable /tmp/x (created)', event: stored[31] },
  container: { id: CONTAINER_A, metadata: containerFacts.metadata },
  window: { from: T0, to: T0 + 6000 * MS, beforeMs: 3000, afterMs: 3000, events: stored.length, complete: true },
};

let root: string;
let cleanup: () => Promise<void>;
let dataDir: string;
let key: SigningKey;
let bundle: FinishedBundle;
let pub: string;

/** The bundle's directory copied (a fresh one per tampering). */
async function copyBundle(name: string): Promise<string> {
  const to = path.join(root, 'copies', name, bundle.id);
  await fsp.mkdir(path.dirname(to), { recursive: true });
  await fsp.cp(bundle.dir, to, { recursive: true });
  return to;
}

beforeAll(async () => {
  ({ dir: root, cleanup } = await tempDir('amber-bundle-'));
  dataDir = path.join(root, 'data');
  key = await loadOrCreateSigningKey(dataDir);
  pub = key.publicKeyFile;
  const w = await BundleWriter.create(dataDir, CREATED_MS);
  const pack = new Packr({ useRecords: false });
  await w.write('events.jsonl', 'events', stored.map((e) => `${JSON.stringify(e)}\n`).join(''));
  await w.write('events.msgpack', 'events', Buffer.concat(stored.map((e) => pack.pack(e))));
  // a core with a 1 MiB hole, as the core writer leaves unmapped gaps: packed sparse, hashed with its zeros
  const core = await w.pathFor('memory/4711.core');
  const fh = await fsp.open(core, C.O_WRONLY | C.O_CREAT | C.O_EXCL | C.O_NOFOLLOW, 0o600);
  await fh.write(Buffer.from('\x7fELF core head'), 0, 14, 0);
  await fh.write(Buffer.from('the secret token=hunter2'), 0, 24, 1024 * 1024);
  await fh.close();
  await w.add('memory/4711.core', 'memory', 4711);
  await w.write('memory/4711.maps.json', 'maps', '{"dumped":[],"skipped":[]}\n', 4711);
  await w.write('executable/4711.exe', 'executable', Buffer.from('#!/bin/sh\necho evil\n'), 4711);
  await w.write('upper-layer.tar', 'upper-layer', Buffer.alloc(1024));
  await w.write('process/4711.json', 'process', `${JSON.stringify({ cmdline: ['/tmp/x', '-c', 'evil'] })}\n`, 4711);
  await w.write('container.json', 'container', `${JSON.stringify(containerFacts, null, 2)}\n`);
  await w.write('exposure.json', 'exposure', `${JSON.stringify(exposureFacts, null, 2)}\n`);
  await w.write('capture.log.jsonl', 'log', '{"step":"core","pid":4711,"ms":12}\n');
  bundle = await w.finish(fields, key);
});
afterAll(() => cleanup());

describe('signing key', () => {
  it('is generated once, owner-only, with its public half beside it', async () => {
    const priv = await fsp.stat(path.join(dataDir, KEYS_DIR, PRIVATE_KEY_FILE));
    expect(priv.mode & 0o777).toBe(0o600);
    expect(key.generated).toBe(true);
    expect(await fsp.readFile(path.join(dataDir, KEYS_DIR, PUBLIC_KEY_FILE), 'utf8')).toBe(key.publicKeyPem);
    const again = await loadOrCreateSigningKey(dataDir);
    expect(again.generated).toBe(false);
    expect(again.publicKeyPem).toBe(key.publicKeyPem);
  });

  it('signs what openssl verifies with the published PEM, and nothing else', async () => {
    const args = ['pkeyutl', '-verify', '-pubin', '-inkey', pub, '-rawin', '-in', path.join(bundle.dir, 'manifest.json'), '-sigfile', path.join(bundle.dir, 'manifest.sig')];
    const { stdout } = await execFileP('openssl', args);
    expect(stdout.trim()).toBe('Signature Verified Successfully');
    const changed = path.join(root, 'changed-manifest.json');
    await fsp.writeFile(changed, Buffer.concat([bundle.manifestBytes, Buffer.from(' ')]));
    const bad = await execFileP('openssl', args.map((a) => (a.endsWith('manifest.json') ? changed : a))).catch((e: { code: number; stdout: string }) => e);
    expect((bad as { code: number }).code).toBe(1);
    expect((bad as { stdout: string }).stdout.trim()).toBe('Signature Verification Failure');
  });

  it('refuses a key file others can read, a key that is not Ed25519, and a planted link', async () => {
    const dir = path.join(root, 'keytest');
    await fsp.mkdir(dir, { mode: 0o700 });
    const keyFile = path.join(dir, 'key.pem');
    const { privateKey } = generateKeyPairSync('ed25519');
    await fsp.writeFile(keyFile, privateKey.export({ type: 'pkcs8', format: 'pem' }), { mode: 0o640 });
    await fsp.chmod(keyFile, 0o640);
    await expect(loadOrCreateSigningKey(path.join(dir, 'data'), keyFile)).rejects.toThrow(
      `signing key ${keyFile} is accessible by group or others (mode 0640): refusing to use it (chmod 600 ${keyFile}; for a Kubernetes secret, defaultMode: 0400)`,
    );
    await fsp.chmod(keyFile, 0o600);
    const ok = await loadOrCreateSigningKey(path.join(dir, 'data'), keyFile);
    expect(ok.file).toBe(keyFile);
    expect(ok.generated).toBe(false);

    const ecFile = path.join(dir, 'ec.pem');
    const ec = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey;
    await fsp.writeFile(ecFile, ec.export({ type: 'pkcs8', format: 'pem' }), { mode: 0o600 });
    await expect(loadOrCreateSigningKey(path.join(dir, 'data'), ecFile)).rejects.toThrow(
      `signing key ${ecFile} is an ec key; bundles are signed with Ed25519 (openssl genpkey -algorithm ed25519 -out ${ecFile})`,
    );

    const planted = path.join(dir, 'planted');
    await fsp.mkdir(path.join(planted, KEYS_DIR), { recursive: true, mode: 0o700 });
    await fsp.symlink(keyFile, path.join(planted, KEYS_DIR, PRIVATE_KEY_FILE));
    await expect(loadOrCreateSigningKey(planted)).rejects.toThrow(
      `signing key ${path.join(planted, KEYS_DIR, PRIVATE_KEY_FILE)}: is a symbolic link: refusing to follow it`,
    );
  });
});

describe('bundle writer', () => {
  it('writes a sorted manifest of every artifact, renames the bundle and packs it', async () => {
    expect(bundle.dir).toBe(path.join(dataDir, 'incidents', bundle.id));
    expect(bundle.archive).toBe(`${bundle.dir}.tar.gz`);
    expect(bundle.id).toMatch(/^20240501T120005Z-[0-9a-f]{6}$/);
    expect(bundle.manifest.artifacts.map((a) => `${a.path} ${a.kind} ${a.size} ${a.pid ?? ''}`)).toEqual([
      'capture.log.jsonl log 35 ',
      'container.json container 1427 ',
      'events.jsonl events 21297 ',
      'events.msgpack events 15732 ',
      'executable/4711.exe executable 20 4711',
      'exposure.json exposure 802 ',
      'memory/4711.core memory 1048600 4711',
      'memory/4711.maps.json maps 27 4711',
      'process/4711.json process 35 4711',
      'upper-layer.tar upper-layer 1024 ',
    ]);
    const core = bundle.manifest.artifacts.find((a) => a.path === 'memory/4711.core')!;
    const { stdout } = await execFileP('sha256sum', [path.join(bundle.dir, 'memory/4711.core')]);
    expect(core.sha256).toBe(stdout.split(' ')[0]);
    expect(bundle.manifestBytes.toString()).toBe(await fsp.readFile(path.join(bundle.dir, 'manifest.json'), 'utf8'));
    // GNU tar reads the archive: every file under the bundle's id
    const list = await execFileP('tar', ['-tzf', bundle.archive]);
    expect(list.stdout.split('\n').filter(Boolean).filter((l) => !l.endsWith('/'))).toEqual(
      ['capture.log.jsonl', 'container.json', 'events.jsonl', 'events.msgpack', 'executable/4711.exe', 'exposure.json', 'manifest.json', 'manifest.sig',
        'memory/4711.core', 'memory/4711.maps.json', 'process/4711.json', 'upper-layer.tar'].map((f) => `${bundle.id}/${f}`),
    );
  });

  it('refuses artifact paths outside the bundle and files it was not told about', async () => {
    const w = await BundleWriter.create(dataDir, CREATED_MS);
    for (const bad of ['../escape', '/etc/passwd', 'a/../b', 'a//b', './x', 'manifest.json', '']) {
      await expect(w.write(bad, 'log', 'x')).rejects.toThrow(`bundle ${w.id}: refusing artifact "${bad}"`);
    }
    await fsp.writeFile(path.join(w.dir, 'stray.txt'), 'x');
    await expect(w.finish(fields, key)).rejects.toThrow(`bundle ${w.id}: not added as artifacts: stray.txt`);
    // the refused bundle stays, incomplete: listed, then cleaned
    const listed = await listBundles(dataDir);
    expect(listed.map((b) => [b.id, b.complete, b.archive !== null, b.manifest?.artifacts ?? null])).toEqual(
      [[bundle.id, true, true, 10], [w.id, false, false, null]].sort((a, b) => (a[0]! < b[0]! ? -1 : 1)),
    );
    expect(listed.find((b) => b.id === bundle.id)!.manifest).toEqual({
      createdAt: '2024-05-01T12:00:05.000Z',
      trigger: { kind: 'drift', rule: 'drift', reason: 'upper-layer executable /tmp/x (created)' },
      containerId: CONTAINER_A,
      artifacts: 10,
      bytes: 1_088_999,
    });
    expect(await cleanIncompleteBundles(dataDir)).toEqual({ removed: [`.tmp-${w.id}`], packed: [] });
    expect((await listBundles(dataDir)).map((b) => b.id)).toEqual([bundle.id]);
  });
});

describe('amber verify', { timeout: 120_000 }, () => {
  it('passes a fresh bundle, as a directory and as its archive', async () => {
    for (const target of [bundle.dir, bundle.archive]) {
      const r = await amber('verify', target, '--key', pub);
      expect(r.stderr).toBe('');
      const lines = r.stdout.trimEnd().split('\n');
      expect(lines[0]).toBe(`bundle     ${target} (${target === bundle.dir ? 'directory' : 'archive'})`);
      expect(lines[1]).toBe(`key        ${pub}`);
      expect(lines.slice(2, 12)).toEqual(bundle.manifest.artifacts.map((a) => `ok         ${a.path}  ${a.size} bytes  sha256 ${a.sha256}`));
      expect(lines.slice(12)).toEqual(['signature  valid', 'verified: 10 artifacts and the signature match the manifest']);
      expect(r.code).toBe(0);
    }
  });

  it('finds the published key through --config', async () => {
    const config = path.join(root, 'amber.yaml');
    await fsp.writeFile(config, `dataDir: ${dataDir}\n`);
    const r = await amber('verify', bundle.dir, '--config', config);
    expect(r.stdout).toContain(`key        ${pub}\n`);
    expect(r.code).toBe(0);
  });

  const artifactPaths = [
    'capture.log.jsonl', 'container.json', 'events.jsonl', 'events.msgpack', 'executable/4711.exe', 'exposure.json',
    'memory/4711.core', 'memory/4711.maps.json', 'process/4711.json', 'upper-layer.tar',
  ];
  it.each(artifactPaths)('fails when one byte of %s changed, naming it (directory, and archive in-process)', async (rel) => {
    const dir = await copyBundle(`flip-${rel.replace(/\//g, '_')}`);
    const file = path.join(dir, rel);
    await fsp.chmod(file, 0o600);
    const buf = await fsp.readFile(file);
    const at = Math.floor(buf.length / 2); // the core's middle is in its hole
    buf[at] ^= 0x01;
    await fsp.writeFile(file, buf);
    const r = await amber('verify', dir, '--key', pub);
    expect(r.code).toBe(1);
    expect(r.stdout).toMatch(new RegExp(`^FAILED     ${rel}  changed: ${rel}: sha256 [0-9a-f]{64}, the manifest says [0-9a-f]{64}$`, 'm'));
    expect(r.stdout).toContain(`signature  valid\nFAILED: 1 problem (changed ${rel})\n`);
    // the same bundle packed by GNU tar, read by the same code in-process
    const archive = `${dir}.tar.gz`;
    await execFileP('tar', ['-czf', archive, '-C', path.dirname(dir), path.basename(dir)]);
    const a = await verifyBundle(archive, key.publicKeyPem);
    expect(a.problems.map((p) => `${p.problem} ${p.path}`)).toEqual([`changed ${rel}`]);
    expect(a.signature).toBe('valid');
  });

  it('fails when an artifact was removed', async () => {
    const dir = await copyBundle('removed');
    await fsp.rm(path.join(dir, 'executable/4711.exe'));
    const r = await amber('verify', dir, '--key', pub);
    expect(r.code).toBe(1);
    expect(r.stdout).toContain('FAILED     executable/4711.exe  missing: executable/4711.exe is listed (20 bytes) but not there\n');
    expect(r.stdout).toContain('FAILED: 1 problem (missing executable/4711.exe)\n');
  });

  it('fails when a file was added, or a link put in an artifact\'s place', async () => {
    const dir = await copyBundle('added');
    await fsp.writeFile(path.join(dir, 'memory', 'implant.so'), 'evil');
    await fsp.rm(path.join(dir, 'upper-layer.tar'));
    await fsp.symlink('/etc/shadow', path.join(dir, 'upper-layer.tar'));
    const r = await amber('verify', dir, '--key', pub);
    expect(r.code).toBe(1);
    expect(r.stdout).toContain('FAILED     memory/implant.so  extra: memory/implant.so (4 bytes) is not listed in the manifest\n');
    expect(r.stdout).toContain('FAILED     upper-layer.tar  not-regular: upper-layer.tar is a symbolic link\n');
    expect(r.stdout).toContain('FAILED: 2 problems (extra memory/implant.so, not-regular upper-layer.tar)\n');
  });

  it('fails when the manifest changed, naming it', async () => {
    const dir = await copyBundle('manifest');
    const file = path.join(dir, 'manifest.json');
    await fsp.chmod(file, 0o600);
    await fsp.writeFile(file, (await fsp.readFile(file, 'utf8')).replace('"node": "node-1"', '"node": "node-2"'));
    const r = await amber('verify', dir, '--key', pub);
    expect(r.code).toBe(1);
    expect(r.stdout).toContain(
      'FAILED     manifest.json  signature: manifest.sig is not the given key\'s signature of manifest.json: manifest.json or manifest.sig was changed\nsignature  INVALID\n',
    );
    expect(r.stdout).toContain('FAILED: 1 problem (signature manifest.json)\n');
  });

  it('fails with a key that did not sign it', async () => {
    const other = path.join(root, 'other.pub.pem');
    await fsp.writeFile(other, generateKeyPairSync('ed25519').publicKey.export({ type: 'spki', format: 'pem' }));
    for (const target of [bundle.dir, bundle.archive]) {
      const r = await amber('verify', target, '--key', other);
      expect(r.code).toBe(1);
      expect(r.stdout).toContain(
        'FAILED     manifest.json  signature: manifest.sig is not the given key\'s signature of manifest.json: the manifest names another public key (signed by another agent, or the wrong --key)\n',
      );
    }
  });

  it('refuses archive entries with .. or absolute names and links, never writing them anywhere', async () => {
    const archive = path.join(root, 'hostile.tar');
    const fh = await fsp.open(archive, 'wx');
    const tar = new TarWriter(fh);
    const h = (name: string) => ({ name: Buffer.from(name), mode: 0o644, uid: 0, gid: 0, mtimeNs: 0n });
    await tar.directory(h(bundle.id));
    for (const f of ['manifest.json', 'manifest.sig', ...artifactPaths]) {
      if (f === 'memory/4711.core') continue; // sparse: copied below as a link instead
      await tar.buffer(h(`${bundle.id}/${f}`), await fsp.readFile(path.join(bundle.dir, f)));
    }
    await tar.symlink(h(`${bundle.id}/memory/4711.core`), Buffer.from('/etc/shadow'));
    await tar.buffer(h(`${bundle.id}/../escaped`), Buffer.from('x'));
    await tar.buffer(h('/tmp/absolute'), Buffer.from('x'));
    await tar.finish();
    await fh.close();
    const r = await amber('verify', archive, '--key', pub);
    expect(r.code).toBe(1);
    expect(r.stdout).toContain('FAILED     memory/4711.core  not-regular: memory/4711.core is a symbolic link\n');
    expect(r.stdout).toContain(`FAILED     ${bundle.id}/../escaped  unsafe-path: archive entry "${bundle.id}/../escaped" is outside the bundle's folder, absolute, or has a ".." part: refused\n`);
    expect(r.stdout).toContain('FAILED     /tmp/absolute  unsafe-path:');
    await expect(fsp.stat(path.join(root, 'escaped'))).rejects.toThrow('ENOENT');
  });

  it('checks the manifest\'s shape', async () => {
    const result = await verifyBundle(bundle.dir, key.publicKeyPem);
    expect(result.ok).toBe(true);
    const dir = await copyBundle('shape');
    const file = path.join(dir, 'manifest.json');
    await fsp.chmod(file, 0o600);
    await fsp.writeFile(file, (await fsp.readFile(file, 'utf8')).replace('"kind": "memory"', '"kind": "secrets"'));
    const r = await verifyBundle(dir, key.publicKeyPem);
    expect(r.problems.map((p) => `${p.path} ${p.problem} ${p.detail.split(':')[0]}`)).toEqual([
      'manifest.json manifest manifest.json is not a bundle manifest',
      'manifest.json signature manifest.sig is not the given key\'s signature of manifest.json',
    ]);
  });
});

describe('amber inspect', { timeout: 120_000 }, () => {
  it('shows the trigger, container, tree, exposure, artifacts and the timeline around the trigger', async () => {
    const expected = `Incident ${bundle.id}
  created    2024-05-01T12:00:05.000Z on node-1 by amber 0.1.0
  verify     OK: 10 artifacts match the manifest, signature valid
  trigger    drift (rule drift): upper-layer executable /tmp/x (created)
  event         4711  x                 drift    incident upper-layer executable /tmp/x (created)  sha256 3d9f2889d6782537…  rules drift
  container  a1b2c3d4e5f6  runtime podman, name web, image docker.io/library/nginx:1.25
  pod        shop/web-7f9 (uid u-1)
  window     -3.000s .. +3.000s around the trigger, 62 events

Process tree
  4600 nginx  nginx -g "daemon off;"  [/usr/sbin/nginx]
  ├─ 4700 sh  /bin/sh
  │  └─ 4711 x  /tmp/x -c evil  <- trigger
  └─ 4601 nginx  "nginx: worker process"  [/usr/sbin/nginx]

Exposure (pid 4711)
  privileged             no
  capabilities           CAP_CHOWN, CAP_NET_RAW
  seccomp                filter
  no_new_privs           no
  host namespaces        net
  sensitive mounts       /var/run/docker.sock <- /run/docker.sock (rw): container runtime socket
  service account token  mounted at /var/run/secrets/kubernetes.io/serviceaccount/token

Artifacts (10, 1088999 bytes)
  PATH                   KIND             PID          SIZE  CHECK
  capture.log.jsonl      log                             35  ok
  container.json         container                     1427  ok
  events.jsonl           events                       21297  ok
  events.msgpack         events                       15732  ok
  executable/4711.exe    executable      4711            20  ok
  exposure.json          exposure                       802  ok
  memory/4711.core       memory          4711       1048600  ok
  memory/4711.maps.json  maps            4711            27  ok
  process/4711.json      process         4711            35  ok
  upper-layer.tar        upper-layer                   1024  ok

Timeline (events.jsonl: 62 events, 7 shown; times relative to the trigger)
  … 28 earlier events not shown
    -0.200s     4700  sh                open     /etc/file28  O_RDONLY  fd 3
    -0.100s     4700  sh                open     /etc/file29  O_RDONLY  fd 3
    -0.001s     4711  x                 exec     /tmp/x  /tmp/x -c evil  [upper-layer]
>   +0.000s     4711  x                 drift    incident upper-layer executable /tmp/x (created)  sha256 3d9f2889d6782537…  rules drift  <- trigger
    +0.001s     4711  x                 connect  tcp 10.0.0.2:40000 -> 203.0.113.7:4444
    +0.002s     4711  x                 dns      R A evil.example NOERROR 203.0.113.7  (1.3 ms)
    +0.003s     4711  x                 fork     child 4712
  … 27 later events not shown
`;
    for (const target of [bundle.dir, bundle.archive]) {
      const r = await amber('inspect', target, '--key', pub, '--lines', '7');
      expect(r.stderr).toBe('');
      expect(r.stdout).toBe(expected);
      expect(r.code).toBe(0);
    }
  });

  it('shows a tampered bundle as failed, and --json carries the same report', async () => {
    const dir = await copyBundle('inspect-tampered');
    await fsp.rm(path.join(dir, 'capture.log.jsonl'));
    const r = await amber('inspect', dir, '--key', pub, '--json');
    expect(r.code).toBe(0);
    const report = JSON.parse(r.stdout) as { verify: { ok: boolean; problems: Array<{ path: string; problem: string }> }; timeline: { total: number; triggerFound: boolean } };
    expect(report.verify.ok).toBe(false);
    expect(report.verify.problems.map((p) => `${p.problem} ${p.path}`)).toEqual(['missing capture.log.jsonl']);
    expect(report.timeline.total).toBe(62);
    expect(report.timeline.triggerFound).toBe(true);
    const text = await amber('inspect', dir, '--key', pub);
    expect(text.stdout).toContain('  verify     FAILED: 1 problem; 9 of 10 artifacts match, signature valid\n             capture.log.jsonl: missing: capture.log.jsonl is listed (35 bytes) but not there\n');
    expect(text.stdout).toContain('  capture.log.jsonl      log                             35  FAILED (missing)\n');
  });

  it('--grep finds text in the memory cores, naming the region from the maps beside the core', async () => {
    // a core the search can read: the executable's mapping, then a heap holding the secret twice
    const heap = Buffer.alloc(4096, 0x2e);
    heap.write('token=hunter2;', 100);
    heap.write('hunter2', 4000);
    const w = await BundleWriter.create(dataDir, CREATED_MS + 1000);
    writeCore(await w.pathFor('memory/4711.core'), [
      { vaddr: 0x400000n, data: Buffer.alloc(4096, 0x41), flags: 5 },
      { vaddr: 0x7f0000000000n, data: heap, flags: 6 },
    ], 4711, 'x');
    await w.add('memory/4711.core', 'memory', 4711);
    const regions = [
      { start: '0x400000', end: '0x401000', perms: 'r-xp', offset: 0, dev: '08:01', inode: 7, path: '/usr/bin/victim', dumped: 4096 },
      { start: '0x7f0000000000', end: '0x7f0000001000', perms: 'rw-p', offset: 0, dev: '00:00', inode: 0, path: '[heap]', dumped: 4096 },
    ];
    await w.write('memory/4711.maps.json', 'maps', `${JSON.stringify({ pid: 4711, comm: 'x', regions })}\n`, 4711);
    const grepBundle = await w.finish({ ...fields, createdAt: new Date(CREATED_MS + 1000).toISOString() }, key);
    for (const target of [grepBundle.dir, grepBundle.archive]) {
      const r = await amber('inspect', target, '--key', pub, '--grep', 'hunter2');
      expect(r.stderr).toBe('');
      expect(r.code).toBe(0);
      expect(r.stdout.slice(r.stdout.indexOf('\nMemory matches\n'))).toBe(GREP_EXPECTED);
    }
    const json = await amber('inspect', grepBundle.dir, '--key', pub, '--grep', 'hunter2', '--json');
    const report = JSON.parse(json.stdout) as { grep: Array<{ path: string; matches: Array<{ address: string; region: { path: string } }> }> };
    expect(report.grep.map((g) => [g.path, g.matches.map((m) => `${m.address} ${m.region.path}`)])).toEqual([
      ['memory/4711.core', ['0x7f000000006a [heap]', '0x7f0000000fa0 [heap]']],
    ]);
    // a core that is not one: the search says so for that core, the report goes on
    const fake = await amber('inspect', bundle.dir, '--key', pub, '--grep', 'hunter2');
    expect(fake.code).toBe(0);
    expect(fake.stdout.endsWith('\nMemory matches\n  memory/4711.core: cannot search: not a 64-bit little-endian ELF file\n')).toBe(true);
  });
});

/** What --grep hunter2 shows of the bundle with the real core (it holds no facts or events: the notes say so). */
const GREP_EXPECTED = `
Memory matches
  memory/4711.core: 2 match(es)
    pid 4711 (x) at 0x7f000000006a in 0x7f0000000000-0x7f0000001000 rw- [heap], core offset 8298
    00007f0000000040  2e 2e 2e 2e 2e 2e 2e 2e  2e 2e 2e 2e 2e 2e 2e 2e  |................|
    00007f0000000050  2e 2e 2e 2e 2e 2e 2e 2e  2e 2e 2e 2e 2e 2e 2e 2e  |................|
    00007f0000000060  2e 2e 2e 2e 74 6f 6b 65  6e 3d 68 75 6e 74 65 72  |....token=hunter|
    00007f0000000070  32 3b 2e 2e 2e 2e 2e 2e  2e 2e 2e 2e 2e 2e 2e 2e  |2;..............|
    00007f0000000080  2e 2e 2e 2e 2e 2e 2e 2e  2e 2e 2e 2e 2e 2e 2e 2e  |................|
    00007f0000000090  2e 2e 2e 2e 2e 2e 2e 2e  2e 2e 2e 2e 2e 2e 2e 2e  |................|
    pid 4711 (x) at 0x7f0000000fa0 in 0x7f0000000000-0x7f0000001000 rw- [heap], core offset 12192
    00007f0000000f80  2e 2e 2e 2e 2e 2e 2e 2e  2e 2e 2e 2e 2e 2e 2e 2e  |................|
    00007f0000000f90  2e 2e 2e 2e 2e 2e 2e 2e  2e 2e 2e 2e 2e 2e 2e 2e  |................|
    00007f0000000fa0  68 75 6e 74 65 72 32 2e  2e 2e 2e 2e 2e 2e 2e 2e  |hunter2.........|
    00007f0000000fb0  2e 2e 2e 2e 2e 2e 2e 2e  2e 2e 2e 2e 2e 2e 2e 2e  |................|
    00007f0000000fc0  2e 2e 2e 2e 2e 2e 2e 2e  2e 2e 2e 2e 2e 2e 2e 2e  |................|

Notes
  container.json: not in the bundle
  exposure.json: not in the bundle
  events.jsonl: not in the bundle
`;
