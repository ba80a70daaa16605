/**
 * The realistic event mix the benches share (bench/buffer.ts, bench/detect.ts):
 * deterministic, built as src/sensor/records.ts builds events.
 */
import type { AmberEvent, DnsEvent } from '../src/sensor/events';

/** xorshift32: the same "random" mix on every run. */
function rng(seed: number): () => number {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return s / 4294967296;
  };
}

/**
 * The realistic mix: 60% open, 20% exec with 4 args, 10% connect, 10% DNS;
 * 200 processes in 20 containers + host, a few hundred distinct paths and names.
 * Objects are object literals with every field, as src/sensor/records.ts builds them.
 */
export function realisticEvents(seed: number, startTs: number, eventsPerSecond: number): () => AmberEvent {
  const r = rng(seed);
  const pick = <T>(a: readonly T[]): T => a[Math.floor(r() * a.length)];
  const hex = () => Array.from({ length: 64 }, () => '0123456789abcdef'[Math.floor(r() * 16)]).join('');
  const containers = [...Array.from({ length: 20 }, hex), ''];
  const comms = ['nginx', 'python3', 'java', 'sh', 'bash', 'curl', 'node', 'postgres', 'redis-server', 'envoy', 'coredns'];
  const dirs = ['/etc', '/usr/lib', '/usr/lib/x86_64-linux-gnu', '/var/log', '/tmp', '/proc/self', '/app', '/app/static', '/var/lib/postgresql/data'];
  const files = ['passwd', 'hosts', 'resolv.conf', 'libc.so.6', 'libssl.so.3', 'index.html', 'app.js', 'status', 'config.yaml', 'data.db'];
  const paths = Array.from({ length: 300 }, (_, i) => `${pick(dirs)}/${pick(files)}${i > 100 ? `.${i}` : ''}`);
  const exes = ['/usr/bin/curl', '/bin/sh', '/usr/bin/python3', '/usr/local/bin/node', '/usr/bin/wget', '/bin/ls', '/usr/bin/cat', '/usr/sbin/nginx'];
  const argPool = ['-c', '-s', 'http://api.internal:8080/health', '--retry', '3', '/app/run.py', '-v', '--config=/etc/app.yaml', 'ls -la /tmp', 'echo ok'];
  const names = Array.from({ length: 200 }, (_, i) => `svc${i}.${pick(['default', 'prod', 'kube-system'])}.svc.cluster.local`);
  const addrs = Array.from({ length: 200 }, () => `10.${Math.floor(r() * 255)}.${Math.floor(r() * 255)}.${Math.floor(r() * 255)}`);
  const procs = Array.from({ length: 200 }, () => {
    const uid = pick([0, 0, 1000, 65534]);
    return {
      pid: 1000 + Math.floor(r() * 60000),
      comm: pick(comms),
      containerId: pick(containers),
      cgroupId: 5000 + Math.floor(r() * 2000),
      mntns: 4026531840 + Math.floor(r() * 500),
      netns: 4026531900 + Math.floor(r() * 500),
      uid,
      ppid: 1 + Math.floor(r() * 5000),
    };
  });
  const openFlags: [number, string[]][] = [[0, ['O_RDONLY']], [524288, ['O_RDONLY', 'O_CLOEXEC']], [577, ['O_WRONLY', 'O_CREAT', 'O_TRUNC']]];
  let ts = startTs;
  const step = 1e9 / eventsPerSecond;
  // Object literals with every field, in the contract's order, as src/sensor/records.ts builds them.
  // (Objects built as `{ ...common, type, … }` are much slower for V8 in Node 20: bench line "spread-built".)
  return () => {
    ts += step * (0.5 + r());
    const p = pick(procs);
    const tid = p.pid + Math.floor(r() * 3);
    const x = r();
    if (x < 0.6) {
      const [flags, flagNames] = pick(openFlags);
      return {
        type: 'open', ts, pid: p.pid, tid, ppid: p.ppid, uid: p.uid, gid: p.uid, comm: p.comm, cgroupId: p.cgroupId,
        containerId: p.containerId, mntns: p.mntns, netns: p.netns,
        path: pick(paths), flags, flagNames, mode: flags & 64 ? 0o644 : 0, ret: r() < 0.9 ? 3 + Math.floor(r() * 20) : -2,
        pathTruncated: false,
      };
    }
    if (x < 0.8) {
      const exe = pick(exes);
      return {
        type: 'exec', ts, pid: p.pid, tid, ppid: p.ppid, uid: p.uid, gid: p.uid, comm: p.comm, cgroupId: p.cgroupId,
        containerId: p.containerId, mntns: p.mntns, netns: p.netns,
        filename: exe, exePath: exe, args: [exe.slice(exe.lastIndexOf('/') + 1), pick(argPool), pick(argPool), pick(argPool)],
        argsTruncated: false, upperLayer: r() < 0.02, fileless: false, script: '', pathTruncated: false,
      };
    }
    const sport = 30000 + Math.floor(r() * 30000);
    if (x < 0.9) {
      return {
        type: 'connect', ts, pid: p.pid, tid, ppid: p.ppid, uid: p.uid, gid: p.uid, comm: p.comm, cgroupId: p.cgroupId,
        containerId: p.containerId, mntns: p.mntns, netns: p.netns,
        proto: 'tcp', family: 4, saddr: '10.1.2.3', sport, daddr: pick(addrs), dport: pick([443, 80, 5432, 6379, 8080]), ret: 0,
      };
    }
    const query = r() < 0.5;
    const dns: DnsEvent = {
      type: 'dns', ts, pid: p.pid, tid, ppid: p.ppid, uid: p.uid, gid: p.uid, comm: p.comm, cgroupId: p.cgroupId,
      containerId: p.containerId, mntns: p.mntns, netns: p.netns,
      proto: 'udp', family: 4, saddr: '10.1.2.3', sport, daddr: '10.96.0.10', dport: 53,
      qr: query ? 'Q' : 'R', id: Math.floor(r() * 65536), name: pick(names), qtype: pick(['A', 'AAAA']),
      rcode: query ? '' : 'NOERROR', answers: query ? [] : [{ type: 'A', data: pick(addrs) }], answersTruncated: false,
    };
    if (!query) dns.latencyNs = Math.floor(r() * 2e6);
    return dns;
  };
}

