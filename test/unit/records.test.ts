/**
 * The decoder on synthetic record bytes, laid out by the offsets the layout
 * test checks against the C compiler: every kind, cut and lying records.
 */
import { describe, expect, it } from 'vitest';
import { parseDnsMessage } from '../../src/sensor/dns';
import type { AmberEvent, DnsEvent } from '../../src/sensor/events';
import { decodeBatch, Kind, Layout as L, RecordFlag, type DecodeContext } from '../../src/sensor/records';

const BOOT_TO_EPOCH = 1_700_000_000_000_000_000;

function header(kind: number, size: number, flags = 0): Buffer {
  const b = Buffer.alloc(size);
  b[L['amber_header.kind']] = kind;
  b[L['amber_header.flags']] = flags;
  b.writeUInt16LE(size, L['amber_header.size']);
  b.writeUInt32LE(1234, L['amber_header.pid']);
  b.writeBigUInt64LE(5_000_000_000n, L['amber_header.ts']);
  b.writeUInt32LE(1235, L['amber_header.tid']);
  b.writeUInt32LE(1, L['amber_header.ppid']);
  b.writeUInt32LE(1000, L['amber_header.uid']);
  b.writeUInt32LE(1001, L['amber_header.gid']);
  b.writeBigUInt64LE(4242n, L['amber_header.cgroup_id']);
  b.writeUInt32LE(4026531840, L['amber_header.mntns']);
  b.writeUInt32LE(4026531992, L['amber_header.netns']);
  b.write('cat', L['amber_header.comm'], 'latin1');
  return b;
}

const COMMON = {
  ts: BOOT_TO_EPOCH + 5_000_000_000, pid: 1234, tid: 1235, ppid: 1, uid: 1000, gid: 1001, comm: 'cat',
  cgroupId: 4242, containerId: 'c-4242', mntns: 4026531840, netns: 4026531992,
};

function withTail(fixed: Buffer, ...tails: Buffer[]): Buffer {
  const rec = Buffer.concat([fixed, ...tails]);
  rec.writeUInt16LE(rec.length, L['amber_header.size']);
  return rec;
}

function execRecord(filename: Buffer, exePath: Buffer, args: Buffer, cwd: Buffer, flags = 0): Buffer {
  const fixed = header(Kind.exec, L.amber_exec, flags);
  fixed.writeUInt16LE(filename.length, L['amber_exec.filename_len']);
  fixed.writeUInt16LE(exePath.length, L['amber_exec.exe_path_len']);
  fixed.writeUInt16LE(args.length, L['amber_exec.args_len']);
  fixed.writeUInt16LE(cwd.length, L['amber_exec.cwd_len']);
  return withTail(fixed, filename, exePath, args, cwd);
}

function openRecord(path: Buffer, flags = 0): Buffer {
  const fixed = header(Kind.open, L.amber_open, flags);
  fixed.writeInt32LE(3, L['amber_open.ret']);
  fixed.writeUInt32LE(0o2000000, L['amber_open.flags']);
  fixed.writeUInt16LE(path.length, L['amber_open.path_len']);
  return withTail(fixed, path);
}

function sockRecord(kind: number): Buffer {
  const b = header(kind, L.amber_sock);
  b.writeInt32LE(-111, L['amber_sock.ret']);
  b[L['amber_sock.proto']] = 6;
  b[L['amber_sock.family']] = 4;
  b.writeUInt16LE(40000, L['amber_sock.sport']);
  b.writeUInt16LE(443, L['amber_sock.dport']);
  Buffer.from([10, 0, 0, 2]).copy(b, L['amber_sock.saddr']);
  Buffer.from([10, 0, 0, 9]).copy(b, L['amber_sock.daddr']);
  return b;
}

// a DNS query for "a.example" A, id 7
const DNS_QUERY = Buffer.from([0, 7, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 0x61, 7, ...Buffer.from('example'), 0, 0, 1, 0, 1]);

function dnsRecord(): Buffer {
  const fixed = header(Kind.dns, L.amber_dns);
  fixed[L['amber_dns.proto']] = 17;
  fixed[L['amber_dns.family']] = 4;
  fixed.writeUInt16LE(50000, L['amber_dns.sport']);
  fixed.writeUInt16LE(53, L['amber_dns.dport']);
  fixed.writeUInt16LE(DNS_QUERY.length, L['amber_dns.payload_len']);
  Buffer.from([127, 0, 0, 1]).copy(fixed, L['amber_dns.saddr']);
  Buffer.from([127, 0, 0, 53]).copy(fixed, L['amber_dns.daddr']);
  return withTail(fixed, DNS_QUERY);
}

function cgroupRecord(path: string, rmdir: boolean): Buffer {
  const fixed = header(Kind.cgroup, L.amber_cgroup, rmdir ? RecordFlag.cgroupRmdir : 0);
  fixed.writeBigUInt64LE(777n, L['amber_cgroup.id']);
  fixed.writeUInt16LE(Buffer.byteLength(path), L['amber_cgroup.path_len']);
  return withTail(fixed, Buffer.from(path));
}

function context() {
  const seen = { cgroups: [] as unknown[], unknown: [] as number[], unframed: [] as number[] };
  const ctx: DecodeContext = {
    bootToEpochNs: BOOT_TO_EPOCH,
    containerId: (cgroupId) => `c-${cgroupId}`,
    onCgroup: (id, path, removed) => seen.cgroups.push({ id, path, removed }),
    dns: (common, payload, tcp) => {
      const m = parseDnsMessage(payload, tcp);
      return m === null ? null : ({ ...common, ...m } as DnsEvent);
    },
    onUnknown: (kind) => seen.unknown.push(kind),
    onUnframed: (bytes) => seen.unframed.push(bytes),
  };
  return { ctx, seen };
}

function decode(...records: Buffer[]) {
  const { ctx, seen } = context();
  const out: AmberEvent[] = [];
  const n = decodeBatch(Buffer.concat(records), ctx, out);
  return { n, out, seen };
}

const nul = (...parts: string[]) => Buffer.from(parts.map((p) => p + '\0').join(''));

describe('decodeBatch', () => {
  it('decodes a record of every kind', () => {
    const fork = header(Kind.fork, L.amber_fork);
    fork.writeUInt32LE(4321, L['amber_fork.child_pid']);
    const exit = header(Kind.exit, L.amber_exit);
    exit.writeInt32LE(0, L['amber_exit.exit_code']);
    exit.writeInt32LE(9, L['amber_exit.signal']);
    const { n, out, seen } = decode(
      execRecord(Buffer.from('/bin/cat'), Buffer.from('/usr/bin/cat'), nul('cat', '-n'), Buffer.alloc(0), RecordFlag.upperLayer),
      exit,
      fork,
      openRecord(Buffer.from('/etc/hosts')),
      sockRecord(Kind.connect),
      sockRecord(Kind.accept),
      dnsRecord(),
      cgroupRecord('/libpod_parent/libpod-abc', true),
    );
    expect(n).toBe(8);
    expect(seen).toEqual({ cgroups: [{ id: 777, path: '/libpod_parent/libpod-abc', removed: true }], unknown: [], unframed: [] });
    expect(out).toEqual([
      { type: 'exec', ...COMMON, filename: '/bin/cat', exePath: '/usr/bin/cat', args: ['cat', '-n'], argsTruncated: false, upperLayer: true, fileless: false, script: '', pathTruncated: false },
      { type: 'exit', ...COMMON, exitCode: 0, signal: 9 },
      { type: 'fork', ...COMMON, childPid: 4321 },
      { type: 'open', ...COMMON, path: '/etc/hosts', flags: 0o2000000, flagNames: ['O_RDONLY', 'O_CLOEXEC'], mode: 0, ret: 3, pathTruncated: false },
      { type: 'connect', ...COMMON, proto: 'tcp', family: 4, saddr: '10.0.0.2', sport: 40000, daddr: '10.0.0.9', dport: 443, ret: -111 },
      { type: 'accept', ...COMMON, proto: 'tcp', family: 4, saddr: '10.0.0.2', sport: 40000, daddr: '10.0.0.9', dport: 443, ret: -111 },
      {
        type: 'dns', ...COMMON, proto: 'udp', family: 4, saddr: '127.0.0.1', sport: 50000, daddr: '127.0.0.53', dport: 53,
        id: 7, qr: 'Q', name: 'a.example', qtype: 'A', rcode: '', answers: [], answersTruncated: false,
      },
    ]);
  });

  it('makes a script absolute against the cwd the kernel sent, and flags cut paths', () => {
    const { out } = decode(
      execRecord(Buffer.from('./s.sh'), Buffer.from('/usr/bin/dash'), nul('/bin/sh', './s.sh'), Buffer.from('/tmp/work'), RecordFlag.script),
      execRecord(Buffer.from('/tmp/x/../s.sh'), Buffer.from('/usr/bin/dash'), nul('/bin/sh', '/tmp/x/../s.sh'), Buffer.alloc(0), RecordFlag.script),
      openRecord(Buffer.from('/a'.repeat(511) + '/'), RecordFlag.pathTruncated),
    );
    expect(out.map((e) => (e.type === 'exec' ? [e.script, e.pathTruncated] : e.type === 'open' ? [e.path.length, e.pathTruncated] : []))).toEqual([
      ['/tmp/work/s.sh', false],
      ['/tmp/x/../s.sh', false], // absolute: as passed
      [1023, true],
    ]);
  });

  it('keeps bytes that are not UTF-8 beside the text, base64', () => {
    const bad = Buffer.from([0x2f, 0x74, 0x6d, 0x70, 0x2f, 0xff, 0xfe]); // "/tmp/\xff\xfe"
    const args = Buffer.concat([nul('cat'), bad, Buffer.from([0])]);
    const { out } = decode(
      openRecord(bad),
      execRecord(bad, Buffer.from('/usr/bin/cat'), args, Buffer.alloc(0)),
      openRecord(Buffer.from('/tmp/\u{fffd}ok')), // a real U+FFFD is text, not damage
    );
    expect(out[0]).toMatchObject({ path: '/tmp/\u{fffd}\u{fffd}', pathRaw: bad.toString('base64') });
    expect(out[1]).toMatchObject({ filename: '/tmp/\u{fffd}\u{fffd}', filenameRaw: bad.toString('base64'), argsRaw: args.toString('base64') });
    expect(out[1]).not.toHaveProperty('exePathRaw');
    expect(Buffer.from((out[0] as { pathRaw: string }).pathRaw, 'base64')).toEqual(bad);
    expect(out[2]).not.toHaveProperty('pathRaw');
  });

  it('counts unknown kinds and goes on', () => {
    const { n, out, seen } = decode(header(42, L.amber_header), openRecord(Buffer.from('/x')));
    expect([n, out.length, seen.unknown]).toEqual([2, 1, [42]]);
  });

  it('counts what a bad size leaves unframed, after decoding what came before', () => {
    const good = openRecord(Buffer.from('/x'));
    // size smaller than a header
    const short = header(Kind.open, L.amber_open);
    short.writeUInt16LE(10, L['amber_header.size']);
    let r = decode(good, short, good);
    expect([r.n, r.out.length, r.seen.unframed]).toEqual([1, 1, [short.length + good.length]]);
    // size past the end of the batch
    const long = openRecord(Buffer.from('/y'));
    long.writeUInt16LE(4000, L['amber_header.size']);
    r = decode(good, good, long, good);
    expect([r.n, r.out.length, r.seen.unframed]).toEqual([2, 2, [long.length + good.length]]);
    // a batch ending inside a header
    r = decode(good, good.subarray(0, 20));
    expect([r.n, r.seen.unframed]).toEqual([1, [20]]);
    // a tail longer than the record's size is cut at the record, not read from the next one
    const lying = openRecord(Buffer.from('/z'));
    lying.writeUInt16LE(500, L['amber_open.path_len']);
    r = decode(lying, good);
    expect(r.out.map((e) => (e as { path: string }).path)).toEqual(['/z', '/x']);
    expect(r.seen.unframed).toEqual([]);
  });
});
