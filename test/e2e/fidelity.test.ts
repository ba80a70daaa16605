/**
 * What an independent tracer showed the sensor missing, on the real kernel
 * with real podman containers: cut paths, fileless and deleted executables,
 * shebang scripts, TXT answers, runc's steps in `podman exec`, bytes that are
 * not UTF-8. Needs root; fails (does not skip) when the sensor cannot load.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import dns from 'node:dns';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Sensor } from '../../src/sensor/sensor';
import { EventLog } from '../helpers/events';
import { startContainer, uniqueName, type Container } from '../helpers/podman';

const PYTHON = '/usr/bin/python3';
const TXT_NAME = 'amber-txt.example';
const BIG_TXT_NAME = 'amber-bigtxt.example';
// an exfiltration-like payload (base32), and a second answer with a quote and a backslash
const TXT_VALUE = 'MZXW6YTBOI======';
const BIG_TXT = ['x'.repeat(300), 'y'.repeat(300)]; // two answers: the second is cut at the 512-byte capture
const RESPONDER = path.resolve(__dirname, '../helpers/dns-responder-cli.cjs');
// the sensor parses port 53 only; an address of loopback's 127/8 of its own, beside other suites' responders
const DNS_HOST = `127.0.${20 + (process.pid % 200)}.53`;

async function startResponder(): Promise<ChildProcess> {
  const records = JSON.stringify({ [TXT_NAME]: { TXT: [TXT_VALUE, 'a"b\\c'] }, [BIG_TXT_NAME]: { TXT: BIG_TXT } });
  const child = spawn(process.execPath, [RESPONDER, '--host', DNS_HOST, '--port', '53', '--records', records], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  await new Promise<void>((resolve, reject) => {
    child.once('exit', (code) => reject(new Error(`the DNS responder exited (${code})`)));
    child.stdout!.on('data', (d: Buffer) => {
      if (d.toString().includes('ready')) resolve();
    });
  });
  return child;
}

function run(cmd: string, args: string[]): Promise<number> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: 'inherit' });
    child.once('error', reject);
    child.once('exit', (code) => resolve(code ?? -1));
  });
}

describe('sensor fidelity on the real kernel', () => {
  const log = new EventLog();
  let sensor: Sensor;
  let container: Container;
  let responder: ChildProcess | undefined;
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'amber-fidelity-'));

  beforeAll(async () => {
    sensor = await Sensor.start({}, log.push);
    responder = await startResponder();
    // started after the sensor: its own events teach the resolver its mount namespace
    container = await startContainer(uniqueName('amber-e2e-fidelity'));
  });

  afterAll(async () => {
    await sensor?.stop();
    if (responder && responder.exitCode === null) {
      const exited = new Promise((r) => responder!.once('exit', r));
      responder.kill('SIGTERM');
      await exited;
    }
    await container?.remove();
    fs.rmSync(tmp, { recursive: true, force: true });
  });

  it('flags an open of a path cut at 1024 bytes', async () => {
    const long = path.join(tmp, ...Array.from({ length: 8 }, (_, i) => `${i}`.repeat(200)));
    expect(Buffer.byteLength(long)).toBeGreaterThan(1024);
    expect(() => fs.openSync(long, 'r')).toThrow(/ENOENT/);
    const [e] = await log.waitFor('open', (e) => e.pid === process.pid && e.path === long.slice(0, 1023));
    expect(e).toMatchObject({ pathTruncated: true, ret: -2 });
    const short = path.join(tmp, 'short');
    fs.closeSync(fs.openSync(short, 'w'));
    const [s] = await log.waitFor('open', (e) => e.pid === process.pid && e.path === short);
    expect(s.pathTruncated).toBe(false);
  });

  it('names a memfd executable as /proc/<pid>/exe does', async () => {
    const code = [
      'import os',
      'fd = os.memfd_create("amber-fileless", 0)',
      'os.write(fd, open("/usr/bin/true", "rb").read())',
      'os.execve(fd, ["amber-memfd-marker"], {})',
    ].join('\n');
    expect(await run(PYTHON, ['-c', code])).toBe(0);
    const [e] = await log.waitFor('exec', (e) => e.args[0] === 'amber-memfd-marker');
    expect(e).toMatchObject({ exePath: '/memfd:amber-fileless (deleted)', fileless: true, script: '', pathTruncated: false });
    expect(e.filename).toMatch(/^\/dev\/fd\/\d+$/);
  });

  it('names a deleted executable "<path> (deleted)"', async () => {
    const bin = path.join(tmp, 'amber-deleted-bin');
    fs.copyFileSync('/usr/bin/true', bin);
    fs.chmodSync(bin, 0o755);
    const code = [
      'import os, sys',
      'fd = os.open(sys.argv[1], os.O_RDONLY)',
      'os.unlink(sys.argv[1])',
      'os.execve(fd, [sys.argv[2]], {})',
    ].join('\n');
    const marker = `amber-deleted-${path.basename(tmp)}`; // unique: other runs on this machine exec their own
    expect(await run(PYTHON, ['-c', code, bin, marker])).toBe(0);
    const [e] = await log.waitFor('exec', (e) => e.args[0] === marker);
    expect(e).toMatchObject({ exePath: `${bin} (deleted)`, fileless: true, script: '' });
  });

  it('names the script a shebang ran, relative or absolute, in the container', async () => {
    await container.exec('/bin/sh', '-c', 'printf "#!/bin/sh\\nexit 0\\n" > /tmp/amber-s.sh && chmod +x /tmp/amber-s.sh');
    await container.exec('/bin/sh', '-c', 'cd /tmp && ./amber-s.sh rel-arg');
    await container.exec('/tmp/amber-s.sh', 'abs-arg');
    const [rel] = await log.waitFor('exec', (e) => e.containerId === container.id && e.args.at(-1) === 'rel-arg');
    expect(rel).toMatchObject({
      filename: './amber-s.sh',
      script: '/tmp/amber-s.sh',
      exePath: '/bin/busybox',
      args: ['/bin/sh', './amber-s.sh', 'rel-arg'],
      pathTruncated: false,
    });
    const [abs] = await log.waitFor('exec', (e) => e.containerId === container.id && e.args.at(-1) === 'abs-arg');
    expect(abs).toMatchObject({ filename: '/tmp/amber-s.sh', script: '/tmp/amber-s.sh', args: ['/bin/sh', '/tmp/amber-s.sh', 'abs-arg'] });
    // a binary is no script
    const [sh] = await log.waitFor('exec', (e) => e.containerId === container.id && e.args.join(' ') === '/bin/sh -c cd /tmp && ./amber-s.sh rel-arg');
    expect(sh.script).toBe('');
  });

  it("decodes a TXT answer's text, and flags an answer list cut at the capture limit", async () => {
    const resolver = new dns.promises.Resolver({ timeout: 2000, tries: 1 });
    resolver.setServers([DNS_HOST]);
    expect(await resolver.resolveTxt(TXT_NAME)).toEqual([[TXT_VALUE], ['a"b\\c']]);
    const [r] = await log.waitFor('dns', (e) => e.qr === 'R' && e.name === TXT_NAME && e.pid === process.pid);
    expect(r).toMatchObject({
      qtype: 'TXT',
      rcode: 'NOERROR',
      answers: [
        { type: 'TXT', data: `"${TXT_VALUE}"` },
        { type: 'TXT', data: '"a\\"b\\\\c"' },
      ],
      answersTruncated: false,
    });
    expect((await resolver.resolveTxt(BIG_TXT_NAME)).map((chunks) => chunks.join(''))).toEqual(BIG_TXT);
    const [big] = await log.waitFor('dns', (e) => e.qr === 'R' && e.name === BIG_TXT_NAME && e.pid === process.pid);
    expect(big).toMatchObject({
      answers: [{ type: 'TXT', data: `"${'x'.repeat(255)}" "${'x'.repeat(45)}"` }],
      answersTruncated: true,
    });
  });

  it("gives runc's steps in a `podman exec` the container's ID once they are in its mount namespace", async () => {
    const mntns = fs.statSync(`/proc/${container.pid}/ns/mnt`).ino;
    const hostMntns = fs.statSync('/proc/self/ns/mnt').ino;
    await container.exec('/bin/sh', '-c', 'echo amber-exec-marker > /dev/null');
    const [sh] = await log.waitFor('exec', (e) => e.containerId === container.id && e.args.at(-1) === 'echo amber-exec-marker > /dev/null');
    // the container's own cgroup, from its first process
    const [init] = log.find('exec', (e) => e.pid === container.pid);
    expect(init?.containerId).toBe(container.id);
    // runc's events in the container's mount namespace before the process joined its cgroup
    const early = log.events.filter((e) => e.mntns === mntns && e.cgroupId !== init.cgroupId && e.ts <= sh.ts);
    expect(early.length).toBeGreaterThan(0);
    expect(early.filter((e) => e.containerId !== container.id)).toEqual([]);
    // runc re-executes itself ("runc init") from a protected copy of its binary: runc 1.1.5 here
    // binds it read-only and detaches the mount (/proc/<pid>/exe says "/"); named by its file
    const runcInit = log.find('exec', (e) => e.args.join(' ') === `${e.args[0]} init` && e.args[0].endsWith('/runc'));
    expect(runcInit.length).toBeGreaterThan(0);
    for (const e of runcInit) expect(e.exePath).toBe(fs.realpathSync(e.args[0]));
    // in the host's mount namespace only the container's cgroup names it (runc's start of the container), never the namespace
    expect(log.events.filter((e) => e.mntns === hostMntns && e.containerId === container.id && e.cgroupId !== init.cgroupId)).toEqual([]);
  });

  it('reports a refused blocking connect without its source (the kernel released it before the exit)', async () => {
    // a port nobody listens on: bind one, note it, close it
    const probe = net.createServer();
    await new Promise<void>((r) => probe.listen(0, '127.0.0.1', r));
    const port = (probe.address() as net.AddressInfo).port;
    await new Promise((r) => probe.close(r));
    const code = `import socket\ns = socket.socket()\ntry:\n  s.connect(("127.0.0.1", ${port}))\nexcept ConnectionRefusedError:\n  pass`;
    expect(await run(PYTHON, ['-c', code])).toBe(0);
    const [e] = await log.waitFor('connect', (e) => e.dport === port && e.ret === -111);
    expect(e).toMatchObject({ proto: 'tcp', family: 4, daddr: '127.0.0.1', saddr: '0.0.0.0', sport: 0 });
  });

  it('frames every record the kernel wrote', () => {
    expect(sensor.stats()).toMatchObject({ unframedRecords: 0, unframedBytes: 0 });
  });

  it('keeps the bytes of a path or argument that is not UTF-8, recoverable from JSON', async () => {
    const name = Buffer.concat([Buffer.from(tmp + '/bad-'), Buffer.from([0xff, 0xfe]), Buffer.from('.txt')]);
    fs.closeSync(fs.openSync(name, 'w'));
    const [e] = await log.waitFor('open', (e) => e.pid === process.pid && e.path === `${tmp}/bad-\u{fffd}\u{fffd}.txt`);
    const back = JSON.parse(JSON.stringify(e)) as typeof e;
    expect(back.pathRaw).toBe(name.toString('base64'));
    expect(Buffer.from(back.pathRaw!, 'base64')).toEqual(name);
    fs.rmSync(name);
    // and of arguments: the whole argv as the kernel captured it
    const code = 'import os\nos.execv("/usr/bin/true", [b"amber-raw-marker", b"a\\xff\\xfeb"])';
    expect(await run(PYTHON, ['-c', code])).toBe(0);
    const [x] = await log.waitFor('exec', (e) => e.args[0] === 'amber-raw-marker');
    expect(x).toMatchObject({ args: ['amber-raw-marker', 'a\u{fffd}\u{fffd}b'], argsRaw: Buffer.from('amber-raw-marker\0a\xff\xfeb\0', 'latin1').toString('base64') });
    expect(x).not.toHaveProperty('filenameRaw');
  });
});
