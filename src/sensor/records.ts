/**
 * Wire records (bpf/events.h) → events (events.ts). The offsets, kinds and
 * flag bits below mirror the C header; test/unit/layout.test.ts checks them
 * against what the compiler laid out (the addon's layout() and
 * wireConstants()), so they cannot drift silently.
 */
import { isUtf8 } from 'node:buffer';
import { posix } from 'node:path';
import type { AmberEvent, CommonFields, DnsEvent, ExecEvent, OpenEvent, Proto } from './events';
import { openFlagNames } from './flags';
import { ipv4ToString, ipv6ToString } from './ip';

/** enum amber_kind */
export const Kind = {
  exec: 1,
  exit: 2,
  fork: 3,
  open: 4,
  connect: 5,
  accept: 6,
  dns: 7,
  cgroup: 8,
} as const;
export const KIND_MAX = 9;
/** Kind number → name ("" where none). */
export const KIND_NAMES: ReadonlyArray<string> = Object.entries(Kind).reduce<string[]>((names, [name, kind]) => {
  names[kind] = name;
  return names;
}, Array<string>(KIND_MAX).fill(''));

export const Layout = {
  'amber_header': 64,
  'amber_header.kind': 0,
  'amber_header.flags': 1,
  'amber_header.size': 2,
  'amber_header.pid': 4,
  'amber_header.ts': 8,
  'amber_header.tid': 16,
  'amber_header.ppid': 20,
  'amber_header.uid': 24,
  'amber_header.gid': 28,
  'amber_header.cgroup_id': 32,
  'amber_header.mntns': 40,
  'amber_header.netns': 44,
  'amber_header.comm': 48,
  'amber_exec': 72,
  'amber_exec.filename_len': 64,
  'amber_exec.exe_path_len': 66,
  'amber_exec.args_len': 68,
  'amber_exec.cwd_len': 70,
  'amber_exit': 72,
  'amber_exit.exit_code': 64,
  'amber_exit.signal': 68,
  'amber_fork': 72,
  'amber_fork.child_pid': 64,
  'amber_open': 80,
  'amber_open.ret': 64,
  'amber_open.flags': 68,
  'amber_open.mode': 72,
  'amber_open.path_len': 76,
  'amber_sock': 112,
  'amber_sock.ret': 64,
  'amber_sock.proto': 68,
  'amber_sock.family': 69,
  'amber_sock.sport': 70,
  'amber_sock.dport': 72,
  'amber_sock.saddr': 80,
  'amber_sock.daddr': 96,
  'amber_dns': 104,
  'amber_dns.proto': 64,
  'amber_dns.family': 65,
  'amber_dns.sport': 66,
  'amber_dns.dport': 68,
  'amber_dns.payload_len': 70,
  'amber_dns.saddr': 72,
  'amber_dns.daddr': 88,
  'amber_cgroup': 80,
  'amber_cgroup.id': 64,
  'amber_cgroup.path_len': 72,
  AMBER_RECORD_MAX: 4096,
  AMBER_PATH_MAX: 1024,
  AMBER_ARGS_MAX: 1024,
  AMBER_DNS_MAX: 512,
  AMBER_KIND_MAX: KIND_MAX,
} as const;

/** AMBER_F_* in events.h */
export const RecordFlag = {
  upperLayer: 1 << 0,
  fileless: 1 << 1,
  argsTruncated: 1 << 2,
  pathTruncated: 1 << 3,
  pathResolved: 1 << 4,
  ingress: 1 << 5,
  cgroupRmdir: 1 << 6,
  script: 1 << 7,
} as const;

/** AMBER_FAMILY_* in events.h: the syscall families the sys_exit dispatcher hands on. */
export const SyscallFamily = {
  file: 1 << 0,
  net: 1 << 1,
} as const;

const L = Layout;
const IPPROTO_TCP = 6;
const TWO_32 = 4294967296;

/** What decoding needs from the rest of the sensor. */
export interface DecodeContext {
  /** CLOCK_REALTIME - CLOCK_BOOTTIME, ns. */
  bootToEpochNs: number;
  containerId(cgroupId: number, pid: number, mntns: number): string;
  onCgroup(id: number, path: string, removed: boolean): void;
  /** Parses a captured DNS message into the event, or returns null when it is not DNS. */
  dns(common: CommonFields & SockAddrs, payload: Uint8Array, tcp: boolean, ingress: boolean): DnsEvent | null;
  /** Records of kinds this version does not know. */
  onUnknown(kind: number): void;
  /**
   * A record whose size cannot frame it (shorter than a header, or past the
   * batch's end): it and the `bytes` after it in the batch are lost, counted here.
   */
  onUnframed(bytes: number): void;
}

export interface SockAddrs {
  proto: Proto;
  family: 4 | 6;
  saddr: string;
  sport: number;
  daddr: string;
  dport: number;
}

function cString(buf: Buffer, start: number, max: number): string {
  let end = start;
  const limit = start + max;
  while (end < limit && buf[end] !== 0) end++;
  return buf.toString('utf8', start, end);
}

function addr(buf: Buffer, off: number, family: number): string {
  return family === 6 ? ipv6ToString(buf, off) : ipv4ToString(buf, off);
}

/**
 * Decodes every record of a batch (records back to back, each starting with
 * its header) and appends the events to `out`. Returns the number of records.
 * A record whose size is impossible ends the batch: the rest cannot be framed,
 * and its bytes are reported to ctx.onUnframed, never dropped silently.
 */
export function decodeBatch(buf: Buffer, ctx: DecodeContext, out: AmberEvent[]): number {
  let off = 0;
  let records = 0;
  const end = buf.length;
  while (off < end) {
    const size = off + L.amber_header <= end ? buf.readUInt16LE(off + L['amber_header.size']) : 0;
    if (size < L.amber_header || off + size > end) {
      ctx.onUnframed(end - off);
      break;
    }
    records++;
    const ev = decodeRecord(buf, off, buf[off], size, ctx);
    if (ev) out.push(ev);
    off += size;
  }
  return records;
}

/**
 * Paths and arguments are bytes (file names are any bytes): those that are not
 * UTF-8 decode with U+FFFD in their place, and the caller keeps the bytes
 * themselves in a `…Raw` field, base64. The scan for U+FFFD comes first:
 * nearly every string passes it without the bytes being looked at again.
 */
function rawIfNotUtf8(s: string, buf: Buffer, start: number, end: number): string | undefined {
  if (s.indexOf('\uFFFD') < 0) return undefined;
  const bytes = buf.subarray(start, end);
  return isUtf8(bytes) ? undefined : bytes.toString('base64');
}

/*
 * Each event is built as one object literal with every field (no spread of a
 * common part): V8 then gives all events of a type one shape, and decoding
 * stays allocation-light on the hot path (measured: spreading cost ~3x).
 */
function decodeRecord(buf: Buffer, off: number, kind: number, size: number, ctx: DecodeContext): AmberEvent | null {
  const flags = buf[off + L['amber_header.flags']];
  if (kind === Kind.cgroup) {
    const id = buf.readUInt32LE(off + L['amber_cgroup.id']) + buf.readUInt32LE(off + L['amber_cgroup.id'] + 4) * TWO_32;
    const len = buf.readUInt16LE(off + L['amber_cgroup.path_len']);
    const path = buf.toString('utf8', off + L.amber_cgroup, Math.min(off + L.amber_cgroup + len, off + size));
    ctx.onCgroup(id, path, (flags & RecordFlag.cgroupRmdir) !== 0);
    return null;
  }
  if (kind === 0 || kind >= KIND_MAX) {
    ctx.onUnknown(kind);
    return null;
  }
  const pid = buf.readUInt32LE(off + L['amber_header.pid']);
  const cgroupId =
    buf.readUInt32LE(off + L['amber_header.cgroup_id']) + buf.readUInt32LE(off + L['amber_header.cgroup_id'] + 4) * TWO_32;
  const mntns = buf.readUInt32LE(off + L['amber_header.mntns']);
  const ts =
    buf.readUInt32LE(off + L['amber_header.ts']) + buf.readUInt32LE(off + L['amber_header.ts'] + 4) * TWO_32 + ctx.bootToEpochNs;
  const tid = buf.readUInt32LE(off + L['amber_header.tid']);
  const ppid = buf.readUInt32LE(off + L['amber_header.ppid']);
  const uid = buf.readUInt32LE(off + L['amber_header.uid']);
  const gid = buf.readUInt32LE(off + L['amber_header.gid']);
  const comm = commString(buf, off + L['amber_header.comm']);
  const containerId = ctx.containerId(cgroupId, pid, mntns);
  const netns = buf.readUInt32LE(off + L['amber_header.netns']);
  const limit = off + size;
  switch (kind) {
    case Kind.exec: {
      const filenameLen = buf.readUInt16LE(off + L['amber_exec.filename_len']);
      const exePathLen = buf.readUInt16LE(off + L['amber_exec.exe_path_len']);
      const argsLen = buf.readUInt16LE(off + L['amber_exec.args_len']);
      const cwdLen = buf.readUInt16LE(off + L['amber_exec.cwd_len']);
      const filenameAt = off + L.amber_exec;
      const filenameEnd = Math.min(filenameAt + filenameLen, limit);
      const exePathAt = filenameAt + filenameLen;
      const exePathEnd = Math.min(exePathAt + exePathLen, limit);
      const argsAt = exePathAt + exePathLen;
      const argsEnd = Math.min(argsAt + argsLen, limit);
      const cwdAt = argsAt + argsLen;
      const cwdEnd = Math.min(cwdAt + cwdLen, limit);
      const filename = buf.toString('utf8', filenameAt, filenameEnd);
      const exePath = buf.toString('utf8', exePathAt, exePathEnd);
      const args = splitArgs(buf, argsAt, argsEnd);
      const isScript = (flags & RecordFlag.script) !== 0;
      const ev: ExecEvent = {
        type: 'exec', ts, pid, tid, ppid, uid, gid, comm, cgroupId, containerId, mntns, netns,
        filename,
        exePath,
        args,
        argsTruncated: (flags & RecordFlag.argsTruncated) !== 0,
        upperLayer: (flags & RecordFlag.upperLayer) !== 0,
        fileless: (flags & RecordFlag.fileless) !== 0,
        script: isScript ? scriptPath(buf.toString('utf8', cwdAt, cwdEnd), filename) : '',
        pathTruncated: (flags & RecordFlag.pathTruncated) !== 0,
      };
      const filenameRaw = rawIfNotUtf8(filename, buf, filenameAt, filenameEnd);
      if (filenameRaw !== undefined) ev.filenameRaw = filenameRaw;
      const exePathRaw = rawIfNotUtf8(exePath, buf, exePathAt, exePathEnd);
      if (exePathRaw !== undefined) ev.exePathRaw = exePathRaw;
      for (const arg of args) {
        if (arg.indexOf('\uFFFD') >= 0) {
          const argsRaw = rawIfNotUtf8(arg, buf, argsAt, argsEnd);
          if (argsRaw !== undefined) ev.argsRaw = argsRaw;
          break;
        }
      }
      if (isScript && (filenameRaw !== undefined || ev.script.indexOf('\uFFFD') >= 0)) {
        // the same join on the bytes (latin1 maps each byte to one char and back)
        const raw = scriptPath(buf.toString('latin1', cwdAt, cwdEnd), buf.toString('latin1', filenameAt, filenameEnd));
        const bytes = Buffer.from(raw, 'latin1');
        if (!isUtf8(bytes)) ev.scriptRaw = bytes.toString('base64');
      }
      return ev;
    }
    case Kind.exit:
      return {
        type: 'exit', ts, pid, tid, ppid, uid, gid, comm, cgroupId, containerId, mntns, netns,
        exitCode: buf.readInt32LE(off + L['amber_exit.exit_code']),
        signal: buf.readInt32LE(off + L['amber_exit.signal']),
      };
    case Kind.fork:
      return {
        type: 'fork', ts, pid, tid, ppid, uid, gid, comm, cgroupId, containerId, mntns, netns,
        childPid: buf.readUInt32LE(off + L['amber_fork.child_pid']),
      };
    case Kind.open: {
      const openFlags = buf.readUInt32LE(off + L['amber_open.flags']);
      const pathLen = buf.readUInt16LE(off + L['amber_open.path_len']);
      const p = off + L.amber_open;
      const pathEnd = Math.min(p + pathLen, limit);
      const ev: OpenEvent = {
        type: 'open', ts, pid, tid, ppid, uid, gid, comm, cgroupId, containerId, mntns, netns,
        path: buf.toString('utf8', p, pathEnd),
        flags: openFlags,
        flagNames: openFlagNames(openFlags),
        mode: buf.readUInt32LE(off + L['amber_open.mode']),
        ret: buf.readInt32LE(off + L['amber_open.ret']),
        pathTruncated: (flags & RecordFlag.pathTruncated) !== 0,
      };
      const pathRaw = rawIfNotUtf8(ev.path, buf, p, pathEnd);
      if (pathRaw !== undefined) ev.pathRaw = pathRaw;
      return ev;
    }
    case Kind.connect:
    case Kind.accept: {
      const family = buf[off + L['amber_sock.family']] === 6 ? 6 : 4;
      return {
        type: kind === Kind.connect ? 'connect' : 'accept', ts, pid, tid, ppid, uid, gid, comm, cgroupId, containerId, mntns, netns,
        proto: buf[off + L['amber_sock.proto']] === IPPROTO_TCP ? 'tcp' : 'udp',
        family,
        saddr: addr(buf, off + L['amber_sock.saddr'], family),
        sport: buf.readUInt16LE(off + L['amber_sock.sport']),
        daddr: addr(buf, off + L['amber_sock.daddr'], family),
        dport: buf.readUInt16LE(off + L['amber_sock.dport']),
        ret: buf.readInt32LE(off + L['amber_sock.ret']),
      };
    }
    case Kind.dns: {
      const family = buf[off + L['amber_dns.family']] === 6 ? 6 : 4;
      const tcp = buf[off + L['amber_dns.proto']] === IPPROTO_TCP;
      const len = buf.readUInt16LE(off + L['amber_dns.payload_len']);
      const p = off + L.amber_dns;
      const sock: CommonFields & SockAddrs = {
        type: 'dns', ts, pid, tid, ppid, uid, gid, comm, cgroupId, containerId, mntns, netns,
        proto: tcp ? 'tcp' : 'udp',
        family,
        saddr: addr(buf, off + L['amber_dns.saddr'], family),
        sport: buf.readUInt16LE(off + L['amber_dns.sport']),
        daddr: addr(buf, off + L['amber_dns.daddr'], family),
        dport: buf.readUInt16LE(off + L['amber_dns.dport']),
      };
      return ctx.dns(sock, buf.subarray(p, Math.min(p + len, limit)), tcp, (flags & RecordFlag.ingress) !== 0);
    }
    default:
      ctx.onUnknown(kind);
      return null;
  }
}

/*
 * comm is 16 bytes, NUL-padded, and a node has few distinct ones: cache the
 * strings by their bytes (two 64-bit halves) instead of decoding each time.
 */
const commCache = new Map<bigint, string>();
function commString(buf: Buffer, start: number): string {
  const key = (buf.readBigUInt64LE(start + 8) << 64n) | buf.readBigUInt64LE(start);
  let comm = commCache.get(key);
  if (comm === undefined) {
    comm = cString(buf, start, 16);
    if (commCache.size > 4096) commCache.clear();
    commCache.set(key, comm);
  }
  return comm;
}

/**
 * The script an interpreter was started for, absolute in the process's view:
 * the filename the caller passed, joined to the caller's cwd when relative
 * (the kernel sends the cwd only then), "." and ".." resolved lexically.
 */
function scriptPath(cwd: string, filename: string): string {
  if (filename.startsWith('/')) return filename;
  if (cwd === '') return filename; // the cwd did not fit: pathTruncated is set
  return posix.resolve(cwd, filename);
}

/** argv as the kernel keeps it: NUL-separated, the last one NUL-terminated unless cut. */
function splitArgs(buf: Buffer, start: number, end: number): string[] {
  const args: string[] = [];
  let s = start;
  for (let i = start; i < end; i++) {
    if (buf[i] === 0) {
      args.push(buf.toString('utf8', s, i));
      s = i + 1;
    }
  }
  if (s < end) args.push(buf.toString('utf8', s, end));
  return args;
}
