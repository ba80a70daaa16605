/**
 * The real BPF programs on the real kernel, with real podman containers.
 * Needs root; fails (does not skip) when the sensor cannot load.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import dns from 'node:dns';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Sensor } from '../../src/sensor/sensor';
import { programIdsHeldBy, waitForProgramsGone } from '../helpers/bpf';
import { EventLog } from '../helpers/events';
import { runOnce, startContainer, uniqueName, type Container } from '../helpers/podman';

const execFileP = promisify(execFile);
const DNS_NAME = 'amber-test.example';
const DNS_SILENT = 'amber-silent.example';
const DNS_RECORDS = JSON.stringify({ [DNS_NAME]: { A: ['10.1.2.3'], AAAA: ['2001:db8::5'] } });
const RESPONDER = path.resolve(__dirname, '../helpers/dns-responder-cli.cjs');

/** The DNS responder as a child process, optionally inside another network namespace. */
async function startResponder(netnsPid?: number): Promise<ChildProcess> {
  const args = [RESPONDER, '--host', '127.0.0.1', '--port', '53', '--records', DNS_RECORDS, '--silent', DNS_SILENT];
  const child =
    netnsPid === undefined
      ? spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'inherit'] })
      : spawn('nsenter', [`--net=/proc/${netnsPid}/ns/net`, process.execPath, ...args], { stdio: ['ignore', 'pipe', 'inherit'] });
  await new Promise<void>((resolve, reject) => {
    child.once('exit', (code) => reject(new Error(`the DNS responder exited (${code})`)));
    child.stdout!.on('data', (d: Buffer) => {
      if (d.toString().includes('ready')) resolve();
    });
  });
  return child;
}

function stopChild(child: ChildProcess | undefined): Promise<void> {
  if (!child || child.exitCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    child.once('exit', () => resolve());
    child.kill('SIGTERM');
  });
}

describe('sensor on the real kernel', () => {
  const log = new EventLog();
  let sensor: Sensor;
  let early: Container;
  const children: ChildProcess[] = [];
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'amber-e2e-'));

  beforeAll(async () => {
    // Started before the sensor: its ID must come from the initial cgroup scan.
    early = await startContainer(uniqueName('amber-e2e-early'));
    // the host's DNS responder on 127.0.0.1:53 (UDP and TCP) for the DNS tests
    children.push(await startResponder());
    sensor = await Sensor.start({ dnsTimeoutMs: 1000 }, log.push);
  });

  afterAll(async () => {
    await sensor?.stop();
    await Promise.all(children.map(stopChild));
    await early?.remove();
    fs.rmSync(tmp, { recursive: true, force: true });
  });

  it('sees /bin/sh run from the image layer in a container that predates it, with its ID', async () => {
    await early.exec('/bin/sh', '-c', 'true');
    const [e] = await log.waitFor('exec', (e) => e.containerId === early.id && e.filename === '/bin/sh');
    expect(e).toMatchObject({
      exePath: '/bin/busybox',
      args: ['/bin/sh', '-c', 'true'],
      argsTruncated: false,
      upperLayer: false,
      fileless: false,
      comm: 'sh',
    });
    expect(e.cgroupId).toBeGreaterThan(1);
    expect(e.mntns).not.toBe(fs.statSync('/proc/self/ns/mnt').ino);
  });

  it('flags a binary copied into the container as upper layer, with its path in the container', async () => {
    await early.exec('cp', '/bin/busybox', '/tmp/busybox');
    await early.exec('/tmp/busybox', 'true');
    const [e] = await log.waitFor('exec', (e) => e.containerId === early.id && e.filename === '/tmp/busybox');
    expect(e).toMatchObject({ exePath: '/tmp/busybox', upperLayer: true, fileless: false, args: ['/tmp/busybox', 'true'] });
  });

  it('gives host processes an empty container ID', async () => {
    const marker = `amber-host-${process.pid}`;
    await execFileP('/bin/echo', [marker]);
    const [e] = await log.waitFor('exec', (e) => e.args[1] === marker);
    expect(e).toMatchObject({ containerId: '', filename: '/bin/echo', exePath: '/usr/bin/echo', upperLayer: false });
  });

  it('names a short-lived container started after it', async () => {
    const { id, output } = await runOnce(uniqueName('amber-e2e-short'), '/bin/sh', '-c', 'echo amber-short');
    expect(output).toBe('amber-short');
    const [e] = await log.waitFor('exec', (e) => e.args.join(' ') === '/bin/sh -c echo amber-short');
    expect(e.containerId).toBe(id);
  });

  it('records exit codes and killing signals', async () => {
    await early.exec('/bin/sh', '-c', 'exit 7').catch(() => undefined);
    await early.exec('/bin/sh', '-c', 'kill -9 $$').catch(() => undefined);
    const [code] = await log.waitFor('exit', (e) => e.containerId === early.id && e.exitCode === 7);
    expect(code).toMatchObject({ signal: 0, comm: 'sh' });
    const [killed] = await log.waitFor('exit', (e) => e.containerId === early.id && e.signal === 9);
    expect(killed).toMatchObject({ exitCode: 0, comm: 'sh' });
  });

  it('records fork with the child pid that then execs', async () => {
    await early.exec('/bin/sh', '-c', '/bin/echo amber-forked & wait');
    const [child] = await log.waitFor('exec', (e) => e.containerId === early.id && e.args.join(' ') === '/bin/echo amber-forked');
    const [fork] = await log.waitFor('fork', (e) => e.childPid === child.pid);
    expect(fork).toMatchObject({ containerId: early.id, comm: 'sh' });
    expect(child.ppid).toBe(fork.pid);
  });

  it('records an open with its flags, mode and fd', async () => {
    const file = path.join(tmp, `open-${Date.now()}.txt`);
    const fd = fs.openSync(file, fs.constants.O_CREAT | fs.constants.O_WRONLY, 0o640);
    fs.closeSync(fd);
    const [e] = await log.waitFor('open', (e) => e.path === file);
    expect(e).toMatchObject({
      pid: process.pid,
      containerId: '',
      ret: fd,
      flags: fs.constants.O_CREAT | fs.constants.O_WRONLY | 0o2000000,
      flagNames: ['O_WRONLY', 'O_CREAT', 'O_CLOEXEC'],
      mode: 0o640,
    });
  });

  it('resolves a relative open to the absolute path in the container', async () => {
    await early.exec('/bin/sh', '-c', 'cd /tmp && echo x > amber-rel.txt');
    const [e] = await log.waitFor('open', (e) => e.containerId === early.id && e.path.endsWith('amber-rel.txt'));
    expect(e).toMatchObject({ path: '/tmp/amber-rel.txt', flagNames: ['O_WRONLY', 'O_CREAT', 'O_TRUNC'], mode: 0o666 });
    expect(e.ret).toBeGreaterThanOrEqual(0);
  });

  it('records a failed open with -errno and the path as passed', async () => {
    const missing = path.join(tmp, 'no-such-dir', 'x');
    expect(() => fs.openSync(missing, 'r')).toThrow();
    const [e] = await log.waitFor('open', (e) => e.path === missing);
    expect(e.ret).toBe(-2);
  });

  it('records TCP connect and accept on loopback with both ends', async () => {
    const server = net.createServer((s) => s.end());
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const port = (server.address() as net.AddressInfo).port;
    const client = net.connect(port, '127.0.0.1');
    await new Promise<void>((r) => client.on('connect', r));
    const localPort = client.localPort!;
    client.destroy();
    server.close();
    const [c] = await log.waitFor('connect', (e) => e.dport === port && e.sport === localPort);
    expect(c).toMatchObject({ proto: 'tcp', family: 4, saddr: '127.0.0.1', daddr: '127.0.0.1', ret: -115, pid: process.pid });
    const [a] = await log.waitFor('accept', (e) => e.sport === port && e.dport === localPort);
    expect(a).toMatchObject({ proto: 'tcp', family: 4, saddr: '127.0.0.1', daddr: '127.0.0.1', pid: process.pid });
    expect(a.ret).toBeGreaterThanOrEqual(0);
  });

  it('pairs a host DNS query with its response', async () => {
    const resolver = new dns.promises.Resolver({ timeout: 2000, tries: 1 });
    resolver.setServers(['127.0.0.1']);
    expect(await resolver.resolve4(DNS_NAME)).toEqual(['10.1.2.3']);
    const [q] = await log.waitFor('dns', (e) => e.name === DNS_NAME && e.qr === 'Q' && e.pid === process.pid);
    expect(q).toMatchObject({ qtype: 'A', rcode: '', answers: [], proto: 'udp', family: 4, saddr: '127.0.0.1', daddr: '127.0.0.1', dport: 53, containerId: '' });
    const [r] = await log.waitFor('dns', (e) => e.qr === 'R' && e.id === q.id && e.dport === q.sport);
    expect(r).toMatchObject({ name: DNS_NAME, qtype: 'A', rcode: 'NOERROR', answers: [{ type: 'A', data: '10.1.2.3' }], answersTruncated: false, saddr: '127.0.0.1', sport: 53, daddr: '127.0.0.1', containerId: '' });
    expect(r.latencyNs).toBe(r.ts - q.ts);
    expect(r.latencyNs).toBeGreaterThan(0);
  });

  it('sees DNS inside a container network namespace, with the container ID', async () => {
    children.push(await startResponder(early.pid));
    await early.exec('nslookup', '-type=a', DNS_NAME, '127.0.0.1');
    const [q] = await log.waitFor('dns', (e) => e.containerId === early.id && e.qr === 'Q' && e.name === DNS_NAME && e.qtype === 'A');
    const [r] = await log.waitFor('dns', (e) => e.containerId === early.id && e.qr === 'R' && e.id === q.id);
    expect(r).toMatchObject({ rcode: 'NOERROR', answers: [{ type: 'A', data: '10.1.2.3' }], latencyNs: r.ts - q.ts, netns: q.netns });
    expect(q.netns).toBe(fs.statSync(`/proc/${early.pid}/ns/net`).ino);
  });

  it('parses DNS over TCP (length-prefixed), paired like UDP', async () => {
    // A query as a resolver writes it on TCP: 2-byte length, header, question (AAAA, IN).
    const id = 0x5a17;
    const qname = Buffer.concat([...DNS_NAME.split('.').map((l) => Buffer.concat([Buffer.from([l.length]), Buffer.from(l)])), Buffer.from([0])]);
    const msg = Buffer.concat([Buffer.from([id >> 8, id & 0xff, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]), qname, Buffer.from([0, 28, 0, 1])]);
    const framed = Buffer.concat([Buffer.from([msg.length >> 8, msg.length & 0xff]), msg]);
    const socket = net.connect(53, '127.0.0.1');
    const reply = await new Promise<Buffer>((resolve, reject) => {
      let got = Buffer.alloc(0);
      socket.on('error', reject);
      socket.on('connect', () => socket.write(framed));
      socket.on('data', (d: Buffer) => {
        got = Buffer.concat([got, d]);
        if (got.length >= 2 && got.length >= 2 + got.readUInt16BE(0)) resolve(got);
      });
    });
    socket.destroy();
    expect(reply.readUInt16BE(2)).toBe(id);
    const [q] = await log.waitFor('dns', (e) => e.proto === 'tcp' && e.qr === 'Q' && e.id === id);
    expect(q).toMatchObject({ name: DNS_NAME, qtype: 'AAAA', dport: 53, pid: process.pid });
    const [r] = await log.waitFor('dns', (e) => e.proto === 'tcp' && e.qr === 'R' && e.id === id);
    expect(r).toMatchObject({ name: DNS_NAME, qtype: 'AAAA', rcode: 'NOERROR', answers: [{ type: 'AAAA', data: '2001:db8::5' }], sport: 53, dport: q.sport, latencyNs: r.ts - q.ts });
  });

  it('reports an unanswered query as TIMEOUT after the documented time', async () => {
    const resolver = new dns.promises.Resolver({ timeout: 300, tries: 1 });
    resolver.setServers(['127.0.0.1']);
    await expect(resolver.resolve4(DNS_SILENT)).rejects.toThrow();
    const [q] = await log.waitFor('dns', (e) => e.name === DNS_SILENT && e.qr === 'Q');
    const [r] = await log.waitFor('dns', (e) => e.name === DNS_SILENT && e.qr === 'R', { timeoutMs: 5000 });
    expect(r).toMatchObject({ rcode: 'TIMEOUT', answers: [], id: q.id, latencyNs: 1e9, ts: q.ts + 1e9, sport: 53, dport: q.sport });
  });

  it('finds the upper layer the same way through the inode-size fallback (overlay as a module without BTF)', async () => {
    const fallback = new EventLog();
    const before = programIdsHeldBy(process.pid);
    const second = await Sensor.start({ types: ['exec'], overlayProbe: 'inode-size' }, fallback.push);
    const secondsOwn = programIdsHeldBy(process.pid).filter((id) => !before.includes(id));
    expect(secondsOwn.length).toBe(second.programs().length);
    try {
      await early.exec('/tmp/busybox', 'true');
      await early.exec('/bin/sh', '-c', 'true');
      const [upper] = await fallback.waitFor('exec', (e) => e.containerId === early.id && e.filename === '/tmp/busybox');
      const [image] = await fallback.waitFor('exec', (e) => e.containerId === early.id && e.filename === '/bin/sh');
      expect(upper.upperLayer).toBe(true);
      expect(image.upperLayer).toBe(false);
    } finally {
      await second.stop();
    }
    // stop() detached and freed its programs: only the suite's main sensor's remain
    expect(await waitForProgramsGone(secondsOwn)).toEqual([]);
    expect(programIdsHeldBy(process.pid)).toEqual(before);
  });

  it("turns a failed attach into an Error with libbpf's own words, and leaves nothing loaded", async () => {
    const before = programIdsHeldBy(process.pid);
    // a directory that is not a cgroup: the kernel refuses to attach the DNS programs there
    const err = (await Sensor.start({ types: ['dns'], cgroupRoot: tmp }, () => undefined).catch((e: unknown) => e)) as Error & {
      code: string;
      errno: number;
      libbpf: string;
    };
    expect(err).toBeInstanceOf(Error);
    expect(err.message).toBe(
      "attaching amber_dns_egress: Bad file descriptor\nlibbpf: prog 'amber_dns_egress': failed to attach to cgroup: Bad file descriptor",
    );
    expect(err).toMatchObject({ code: 'ESENSOR', errno: -9 });
    expect(err.libbpf).toContain("prog 'amber_dns_egress': failed to attach to cgroup");
    expect(programIdsHeldBy(process.pid)).toEqual(before);
  });

  it('counts what the ring had no room for instead of losing it silently', async () => {
    const tiny = new EventLog();
    // One page of ring, drained once a second: a burst of opens must overflow it.
    const small = await Sensor.start({ types: ['open'], ringBytes: 4096, wakeupBytes: 1 << 30, pollMs: 1000 }, tiny.push);
    const file = path.join(tmp, 'burst');
    const burst = 2000;
    try {
      for (let i = 0; i < burst; i++) fs.closeSync(fs.openSync(file, 'w'));
    } finally {
      await small.stop();
    }
    const stats = small.stats();
    const seen = tiny.find('open', (e) => e.path === file).length;
    expect(stats.drops.open).toBeGreaterThan(0);
    expect(seen).toBeLessThan(burst);
    // every open of the burst was either delivered or counted (others' opens may be counted too)
    expect(seen + stats.drops.open).toBeGreaterThanOrEqual(burst);
  });
});
