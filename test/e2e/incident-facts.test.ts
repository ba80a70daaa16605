/**
 * Process facts, process trees and exposure of real podman containers: a
 * default one, a privileged one sharing the host's pid and network namespaces
 * with the host's /run mounted, a TCP listener, and a process with non-UTF-8
 * arguments and environment. The host's reference process is this test's own
 * (the containers are started from its namespaces).
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { findCgroup2Root } from '../../src/sensor/preflight';
import { assessExposure, capabilityNames } from '../../src/incident/exposure';
import { collectProcessFacts, containerProcessTree, renderProcessTree } from '../../src/incident/process-facts';
import { ensureTestImage, podman, uniqueName } from '../helpers/podman';

const started: string[] = [];

async function run(...args: string[]): Promise<{ id: string; pid: number }> {
  const image = await ensureTestImage();
  const cmdStart = args.indexOf('--');
  const id = await podman('run', '-d', '--name', uniqueName('facts'), ...args.slice(0, cmdStart), image, ...args.slice(cmdStart + 1));
  started.push(id);
  const pid = Number(await podman('inspect', '-f', '{{.State.Pid}}', id));
  return { id, pid };
}

/** Polls until check passes (a container's processes start after `podman run -d` returns). */
async function until<T>(read: () => Promise<T>, ok: (v: T) => boolean, ms = 10_000): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await read();
    if (ok(v) || Date.now() > deadline) return v;
    await new Promise((r) => setTimeout(r, 50));
  }
}

const ownStatus = fs.readFileSync('/proc/self/status', 'utf8');
const ownBounding = BigInt(`0x${/^CapBnd:\s*([0-9a-f]+)$/m.exec(ownStatus)![1]}`);
const HOST = { hostPid: process.pid };
const cgroupRoot = findCgroup2Root(fs.readFileSync('/proc/self/mountinfo', 'utf8'), false);

// podman 4.3's default capabilities (no default_capabilities in the tests' containers.conf)
const PODMAN_DEFAULT_CAPS = [
  'CAP_CHOWN',
  'CAP_DAC_OVERRIDE',
  'CAP_FOWNER',
  'CAP_FSETID',
  'CAP_KILL',
  'CAP_SETGID',
  'CAP_SETUID',
  'CAP_SETPCAP',
  'CAP_NET_BIND_SERVICE',
  'CAP_NET_RAW',
  'CAP_SYS_CHROOT',
  'CAP_MKNOD',
  'CAP_AUDIT_WRITE',
  'CAP_SETFCAP',
];

afterAll(async () => {
  for (const id of started) await podman('rm', '-f', '-t', '0', id).catch(() => {});
});

describe('a default container', () => {
  let c: { id: string; pid: number };
  beforeAll(async () => {
    c = await run('-e', 'DB_PASSWORD=hunter2', '-e', 'PLAIN=x', '-e', 'my_api_key=k', '--', 'sh', '-c', 'sleep 100 & sleep 100 & wait');
  });

  it('is exposed as podman grants by default: its caps, seccomp filter, only the user, cgroup namespaces shared (no cgroup namespace on this hybrid host)', async () => {
    const exposure = await assessExposure(c.pid, HOST);
    expect(exposure).toEqual({
      pid: c.pid,
      capabilities: { effective: PODMAN_DEFAULT_CAPS, permitted: PODMAN_DEFAULT_CAPS, bounding: PODMAN_DEFAULT_CAPS, inheritable: [], ambient: [] },
      privileged: false,
      seccomp: 'filter',
      noNewPrivs: false,
      hostNamespaces: { pid: false, net: false, ipc: false, uts: false, mnt: false, user: true, cgroup: true },
      sensitiveMounts: [],
      serviceAccountToken: { mounted: false },
      errors: [],
    });
  });

  it('keeps environment names, redacts secrets case-insensitively, keeps the rest exactly', async () => {
    const facts = await collectProcessFacts(c.pid);
    // podman orders a container's environment by a Go map: the order is not the container's
    const byName = (a: { name: string }, b: { name: string }) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0);
    expect([...facts.environ].sort(byName)).toEqual(
      [
      { name: 'PATH', value: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', redacted: false },
      { name: 'TERM', value: 'xterm', redacted: false },
      { name: 'container', value: 'podman', redacted: false },
      { name: 'DB_PASSWORD', value: '[redacted]', redacted: true },
      { name: 'PLAIN', value: 'x', redacted: false },
      { name: 'my_api_key', value: '[redacted]', redacted: true },
      { name: 'HOME', value: '/', redacted: false },
      { name: 'HOSTNAME', value: c.id.slice(0, 12), redacted: false },
      ].sort(byName),
    );
    expect(JSON.stringify(facts)).not.toContain('hunter2');
    expect(facts).toMatchObject({
      pid: c.pid,
      exited: false,
      comm: 'sh',
      args: ['sh', '-c', 'sleep 100 & sleep 100 & wait'],
      exe: '/bin/busybox',
      cwd: '/',
      root: '/',
      uid: { real: 0, effective: 0, saved: 0, filesystem: 0 },
      gid: { real: 0, effective: 0, saved: 0, filesystem: 0 },
      truncated: [],
      errors: [],
    });
    expect(facts.argsBase64).toBeUndefined();
    expect(facts.status.Name).toBe('sh');
    expect(facts.status.NSpid).toBe(`${c.pid}\t1`);
    // the same namespaces as the kernel's links say, and the container's cgroup
    for (const ns of ['pid', 'net', 'mnt', 'ipc', 'uts']) {
      expect(`${ns}:[${facts.namespaces[ns]}]`).toBe(fs.readlinkSync(`/proc/${c.pid}/ns/${ns}`));
    }
    expect(facts.cgroup.find((l) => l.hierarchy === 0)).toEqual({ hierarchy: 0, controllers: [], path: `/libpod_parent/libpod-${c.id}` });
    const root = facts.mounts.find((m) => m.mountPoint === '/');
    expect(root?.fsType).toBe('overlay');
    expect(facts.mounts.find((m) => m.mountPoint === '/sys')?.mountOptions[0]).toBe('ro');
    const started = new Date(await podman('inspect', '-f', '{{.State.StartedAt.Format "2006-01-02T15:04:05.000Z07:00"}}', c.id)).getTime();
    expect(Math.abs(new Date(facts.startedAt).getTime() - started)).toBeLessThan(1000);
    expect(facts.fds.map((f) => [f.fd, f.target.replace(/\d+/, 'N')])).toEqual([
      [0, '/dev/null'],
      [1, 'pipe:[N]'],
      [2, 'pipe:[N]'],
    ]);
    // a process in its own network namespace with no sockets
    expect(facts.sockets).toEqual([]);
  });

  it('has the process tree podman top shows, nested under the shell', async () => {
    const top = await until(
      () => podman('top', c.id, 'hpid', 'pid', 'ppid', 'comm'),
      (t) => t.split('\n').length === 4,
    );
    const rows = top
      .split('\n')
      .slice(1)
      .map((l) => l.trim().split(/\s+/))
      .map(([hpid, pid]) => ({ hpid: Number(hpid), pid: Number(pid) }));
    const [sh, sleep1, sleep2] = rows;
    expect(sh.pid).toBe(1);
    expect(sh.hpid).toBe(c.pid);
    const expected = {
      tree: [
        {
          pid: c.pid,
          ppid: expect.any(Number),
          nspid: 1,
          comm: 'sh',
          exePath: '/bin/busybox',
          args: ['sh', '-c', 'sleep 100 & sleep 100 & wait'],
          children: [sleep1, sleep2].map((s) => ({
            pid: s.hpid,
            ppid: c.pid,
            nspid: s.pid,
            comm: 'sleep',
            exePath: '/bin/busybox',
            args: ['sleep', '100'],
            children: [],
          })),
        },
      ],
      source: 'cgroup',
      errors: [],
    };
    const byInit = await containerProcessTree({ initPid: c.pid }, { cgroupRoot });
    expect(byInit).toEqual(expected);
    // conmon, the shell's parent, is not the container's
    expect(fs.readFileSync(`/proc/${byInit.tree[0].ppid}/comm`, 'utf8')).toBe('conmon\n');
    expect(await containerProcessTree({ cgroupPath: `/libpod_parent/libpod-${c.id}` }, { cgroupRoot })).toEqual(expected);
    expect(renderProcessTree(byInit.tree)).toBe(
      [
        `[1] sh  pid ${c.pid}  /bin/busybox  sh -c 'sleep 100 & sleep 100 & wait'`,
        `├── [${sleep1.pid}] sleep  pid ${sleep1.hpid}  /bin/busybox  sleep 100`,
        `└── [${sleep2.pid}] sleep  pid ${sleep2.hpid}  /bin/busybox  sleep 100`,
        '',
      ].join('\n'),
    );
  });

  it('refuses a cgroup path that leaves the cgroup root', async () => {
    await expect(containerProcessTree({ cgroupPath: '/libpod_parent/../..' }, { cgroupRoot })).rejects.toThrow('leaves the cgroup root');
  });
});

describe('a privileged container sharing the host pid and network namespaces, with the host /run mounted', () => {
  it('is privileged, unconfined, shares pid and net, and lists the host /run, a read-write /sys and /proc', async () => {
    const c = await run('--privileged', '--pid=host', '--net=host', '-v', '/run:/host-run', '--', 'sleep', '300');
    const exposure = await assessExposure(c.pid, HOST);
    const all = capabilityNames(ownBounding);
    expect(all).toContain('CAP_SYS_ADMIN');
    expect(exposure).toEqual({
      pid: c.pid,
      capabilities: { effective: all, permitted: all, bounding: all, inheritable: [], ambient: [] },
      privileged: true,
      seccomp: 'disabled',
      noNewPrivs: false,
      hostNamespaces: { pid: true, net: true, ipc: false, uts: false, mnt: false, user: true, cgroup: true },
      sensitiveMounts: [
        { path: '/host-run', source: '/run', reason: "the host's /run: container runtime sockets and services' state", writable: true },
        { path: '/proc', source: 'proc', reason: 'proc mounted read-write with a writable /proc/sys: host kernel tunables', writable: true },
        { path: '/sys', source: '/sys', reason: "the host's /sys; sysfs mounted read-write: kernel and device settings", writable: true },
      ],
      serviceAccountToken: { mounted: false },
      errors: [],
    });
  });

  it('sees the read-only host /run as not writable', async () => {
    const c = await run('-v', '/run:/host-run:ro', '--', 'sleep', '300');
    const exposure = await assessExposure(c.pid, HOST);
    expect(exposure.sensitiveMounts).toEqual([
      { path: '/host-run', source: '/run', reason: "the host's /run: container runtime sockets and services' state", writable: false },
    ]);
    expect(exposure.privileged).toBe(false);
  });
});

describe('a listening process', () => {
  it('shows its TCP socket with its port, state and the fd holding it', async () => {
    const c = await run('--', 'busybox', 'nc', '-l', '-p', '8080');
    const facts = await until(
      () => collectProcessFacts(c.pid),
      (f) => f.sockets.length > 0,
    );
    expect(facts.comm).toBe('busybox');
    expect(facts.args).toEqual(['busybox', 'nc', '-l', '-p', '8080']);
    const socketFd = facts.fds.find((f) => f.target.startsWith('socket:'));
    expect(socketFd).toBeDefined();
    const inode = Number(/^socket:\[(\d+)\]$/.exec(socketFd!.target)![1]);
    expect(facts.sockets).toEqual([
      {
        // busybox nc listens on the IPv6 wildcard (dual-stack)
        protocol: 'tcp6',
        localAddress: '::',
        localPort: 8080,
        remoteAddress: '::',
        remotePort: 0,
        state: 'LISTEN',
        inode,
        path: '',
        type: 'stream',
        fds: [socketFd!.fd],
      },
    ]);
    expect(socketFd!.flags).toBe('02000002'); // O_CLOEXEC | O_RDWR, octal as fdinfo prints it
    expect(facts.fds.map((f) => f.fd)).toEqual([0, 1, 2, socketFd!.fd]);
  });
});

describe('hostile and vanishing processes', () => {
  it('keeps non-UTF-8 arguments and environment losslessly, and a mounted service-account token', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'amber-facts-sa-'));
    try {
      fs.writeFileSync(path.join(dir, 'token'), 'eyJ.test.token');
      const c = await run(
        '-v',
        `${dir}:/var/run/secrets/kubernetes.io/serviceaccount:ro`,
        '--',
        'sh',
        '-c',
        `export RAW="$(printf '\\377')"; exec sh -c 'sleep 100; true' "$(printf 'a\\377b')"`,
      );
      const facts = await until(
        () => collectProcessFacts(c.pid),
        (f) => f.args.length === 4,
      );
      expect(facts.args).toEqual(['sh', '-c', 'sleep 100; true', 'a\ufffdb']);
      expect(Buffer.from(facts.argsBase64!, 'base64')).toEqual(Buffer.from('sh\0-c\0sleep 100; true\0a\xffb\0', 'latin1'));
      const raw = facts.environ.find((e) => e.name === 'RAW');
      expect(raw).toEqual({ name: 'RAW', value: '\ufffd', redacted: false, base64: Buffer.from('RAW=\xff', 'latin1').toString('base64') });

      const exposure = await assessExposure(c.pid, HOST);
      expect(exposure.serviceAccountToken).toEqual({ mounted: true, path: '/var/run/secrets/kubernetes.io/serviceaccount/token' });
      expect(exposure.sensitiveMounts).toEqual([
        {
          path: '/var/run/secrets/kubernetes.io/serviceaccount',
          source: dir,
          reason: 'a host path mounted in (hostPath-style bind mount)',
          writable: false,
        },
      ]);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('gives exited: true, not an exception, for a process that is gone', async () => {
    const c = await run('--', 'sleep', '300');
    await podman('rm', '-f', '-t', '0', c.id);
    const facts = await collectProcessFacts(c.pid);
    expect(facts).toMatchObject({ pid: c.pid, exited: true, errors: ['stat: ENOENT'], args: [], environ: [] });
  });
});
