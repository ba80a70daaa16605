/**
 * What /proc says about a process of an incident (process/<pid>.json) and the
 * process tree of its container (container.json). Everything read is the
 * workload's and hostile: links are read with readlink only, never followed;
 * files are opened O_NOFOLLOW|O_NONBLOCK, only when regular, up to a cap; a
 * process that exits (or whose pid is reused) mid-way yields what was read
 * and `exited: true`, never an exception.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { clean } from '../cli/format';
import { readBoundedBytes, readBoundedFile } from '../containers/metadata-files';
import { parseMountinfoLine, type MountinfoEntry } from '../containers/metadata-mountinfo';
import { processStartMs } from '../containers/metadata';
import { compileGlobs, type StringMatcher } from '../detect/glob';
import { ipv4ToString, ipv6ToString } from '../sensor/ip';
import type { ProcessNode } from './facts-types';
import type { EnvVar, FdFact, IdSet, ProcessFacts, SocketFact, SocketProtocol } from './process-facts-types';

/** A process of container.json's tree; nspid is beyond the shape inspect requires (it ignores fields it does not know). */
export interface ContainerProcessNode extends ProcessNode {
  /** The pid inside the container's pid namespace (its innermost NSpid). */
  nspid: number;
  children: ContainerProcessNode[];
}

export const REDACTED = '[redacted]';

export const DEFAULT_PROCESS_FACTS = {
  procRoot: '/proc',
  /**
   * Environment variables whose value is replaced: globs (`*` any run) over the
   * name, case-insensitive. Errs towards hiding: a redacted harmless value costs
   * less than a leaked credential in an evidence bundle that gets shared.
   */
  redactEnv: [
    '*PASSWORD*',
    '*PASSWD*',
    '*PASSPHRASE*',
    '*_PASS',
    '*SECRET*',
    '*TOKEN*',
    '*KEY*',
    '*CREDENTIAL*',
    '*PRIVATE*',
    '*AUTH*',
    '*SESSION*',
    '*COOKIE*',
    '*SIGNATURE*',
    '*DSN*',
    '*DATABASE_URL*',
    '*CONNECTION_STRING*',
    'AWS_*',
    'AZURE_*',
    'GOOGLE_APPLICATION_CREDENTIALS',
  ] as readonly string[],
  /** Cap of each file read (cmdline, environ, mountinfo, each /proc/net table). */
  maxBytes: 1 << 20,
  /** Open fds listed at most. */
  maxFds: 4096,
  /** Sockets listed at most, per table. */
  maxSockets: 4096,
};

export interface ProcessFactsOptions {
  procRoot?: string;
  redactEnv?: readonly string[];
  maxBytes?: number;
  maxFds?: number;
  maxSockets?: number;
}

export const DEFAULT_PROCESS_TREE = {
  procRoot: '/proc',
  /** The cgroup2 mount (hybrid hosts: /sys/fs/cgroup/unified). */
  cgroupRoot: '/sys/fs/cgroup',
  maxProcesses: 16_384,
  /** cgroup.procs of the container's cgroup and of its descendants down to this depth. */
  maxCgroupDepth: 16,
};

export interface ProcessTreeOptions {
  procRoot?: string;
  cgroupRoot?: string;
  maxProcesses?: number;
  maxCgroupDepth?: number;
}

const MAX_SMALL = 64 * 1024;
const MAX_LINK = 4096;
const LITTLE_ENDIAN = os.endianness() === 'LE';

const TCP_STATES: Record<string, string> = {
  '01': 'ESTABLISHED',
  '02': 'SYN_SENT',
  '03': 'SYN_RECV',
  '04': 'FIN_WAIT1',
  '05': 'FIN_WAIT2',
  '06': 'TIME_WAIT',
  '07': 'CLOSE',
  '08': 'CLOSE_WAIT',
  '09': 'LAST_ACK',
  '0A': 'LISTEN',
  '0B': 'CLOSING',
  '0C': 'NEW_SYN_RECV',
};
// a UDP socket is "closed" unless connected: ss calls that UNCONN
const UDP_STATES: Record<string, string> = { '01': 'ESTABLISHED', '07': 'UNCONN' };
const UNIX_STATES: Record<string, string> = { '01': 'UNCONNECTED', '02': 'CONNECTING', '03': 'CONNECTED', '04': 'DISCONNECTING' };
const UNIX_TYPES: Record<string, string> = { '0001': 'stream', '0002': 'dgram', '0005': 'seqpacket' };
const SO_ACCEPTCON = 0x10000;

function code(err: unknown): string {
  return (err as NodeJS.ErrnoException).code ?? (err as Error).message;
}

/** Redaction by name: globs matched case-insensitively. */
export function envRedactor(globs: readonly string[]): StringMatcher {
  const match = compileGlobs(globs.map((g) => g.toUpperCase()));
  return (name) => match(name.toUpperCase());
}

const utf8 = new TextDecoder('utf-8', { fatal: true });
function isUtf8(b: Buffer): boolean {
  try {
    utf8.decode(b);
    return true;
  } catch {
    return false;
  }
}

/** NUL-separated fields (cmdline, environ), the trailing NUL dropped. */
function splitNul(b: Buffer): Buffer[] {
  const parts: Buffer[] = [];
  let start = 0;
  for (let i = 0; i < b.length; i++) {
    if (b[i] === 0) {
      parts.push(b.subarray(start, i));
      start = i + 1;
    }
  }
  if (start < b.length) parts.push(b.subarray(start));
  return parts;
}

export function parseEnviron(b: Buffer, redact: StringMatcher): EnvVar[] {
  const out: EnvVar[] = [];
  for (const entry of splitNul(b)) {
    const eq = entry.indexOf(0x3d);
    const name = (eq < 0 ? entry : entry.subarray(0, eq)).toString('utf8');
    const value = eq < 0 ? '' : entry.subarray(eq + 1).toString('utf8');
    if (redact(name)) out.push({ name, value: REDACTED, redacted: true });
    else if (isUtf8(entry)) out.push({ name, value, redacted: false });
    else out.push({ name, value, redacted: false, base64: entry.toString('base64') });
  }
  return out;
}

export function parseStatus(text: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const line of text.split('\n')) {
    const colon = line.indexOf(':');
    if (colon > 0) out[line.slice(0, colon)] = line.slice(colon + 1).trim();
  }
  return out;
}

function idSet(value: string | undefined): IdSet | null {
  const ids = (value ?? '').split(/\s+/).map(Number);
  if (ids.length !== 4 || !ids.every(Number.isSafeInteger)) return null;
  return { real: ids[0], effective: ids[1], saved: ids[2], filesystem: ids[3] };
}

/** Field 22 of /proc/<pid>/stat (comm, field 2, may hold spaces and ')'). */
export function startTicksOf(statText: string): number {
  const close = statText.lastIndexOf(')');
  const ticks = close < 0 ? NaN : Number(statText.slice(close + 2).split(' ')[19]);
  return Number.isSafeInteger(ticks) ? ticks : -1;
}

export function parseProcCgroupLines(text: string): ProcessFacts['cgroup'] {
  const out: ProcessFacts['cgroup'] = [];
  for (const line of text.split('\n')) {
    const first = line.indexOf(':');
    const second = first < 0 ? -1 : line.indexOf(':', first + 1);
    if (second < 0) continue;
    const controllers = line.slice(first + 1, second);
    out.push({ hierarchy: Number(line.slice(0, first)), controllers: controllers === '' ? [] : controllers.split(','), path: line.slice(second + 1) });
  }
  return out;
}

export function parseMountinfo(text: string): MountinfoEntry[] {
  const out: MountinfoEntry[] = [];
  for (const line of text.split('\n')) {
    const entry = parseMountinfoLine(line);
    if (entry !== null) out.push(entry);
  }
  return out;
}

function hexBytes(hex: string): Buffer {
  const b = Buffer.from(hex, 'hex');
  // each 32-bit word is printed in host order
  if (LITTLE_ENDIAN) for (let i = 0; i + 4 <= b.length; i += 4) b.subarray(i, i + 4).reverse();
  return b;
}

/** "0100007F:1F90" (IPv4) or 32 hex digits (IPv6) and a port. */
export function parseProcNetAddress(text: string): { address: string; port: number } | null {
  const colon = text.indexOf(':');
  const hex = text.slice(0, colon);
  const port = parseInt(text.slice(colon + 1), 16);
  if (colon < 0 || !/^[0-9A-Fa-f]+$/.test(hex) || !Number.isSafeInteger(port)) return null;
  if (hex.length === 8) return { address: ipv4ToString(hexBytes(hex), 0), port };
  if (hex.length === 32) return { address: ipv6ToString(hexBytes(hex), 0), port };
  return null;
}

/** /proc/net/{tcp,tcp6,udp,udp6}, header skipped, malformed lines skipped. */
export function parseInetTable(text: string, protocol: Exclude<SocketProtocol, 'unix'>, max: number): { sockets: SocketFact[]; truncated: boolean } {
  const states = protocol.startsWith('tcp') ? TCP_STATES : UDP_STATES;
  const sockets: SocketFact[] = [];
  for (const line of text.split('\n').slice(1)) {
    const f = line.trim().split(/\s+/);
    if (f.length < 10) continue;
    const local = parseProcNetAddress(f[1]);
    const remote = parseProcNetAddress(f[2]);
    const inode = Number(f[9]);
    if (local === null || remote === null || !Number.isSafeInteger(inode)) continue;
    if (sockets.length >= max) return { sockets, truncated: true };
    sockets.push({
      protocol,
      localAddress: local.address,
      localPort: local.port,
      remoteAddress: remote.address,
      remotePort: remote.port,
      state: states[f[3].toUpperCase()] ?? f[3],
      inode,
      path: '',
      type: protocol.startsWith('tcp') ? 'stream' : 'dgram',
      fds: [],
    });
  }
  return { sockets, truncated: false };
}

const UNIX_LINE = /^\s*[0-9A-Fa-f]+: [0-9A-Fa-f]+ [0-9A-Fa-f]+ ([0-9A-Fa-f]+) ([0-9A-Fa-f]+) ([0-9A-Fa-f]+)\s+(\d+)(?: (.*))?$/;

export function parseUnixTable(text: string, max: number): { sockets: SocketFact[]; truncated: boolean } {
  const sockets: SocketFact[] = [];
  for (const line of text.split('\n').slice(1)) {
    const m = UNIX_LINE.exec(line);
    if (m === null) continue;
    if (sockets.length >= max) return { sockets, truncated: true };
    const listening = (parseInt(m[1], 16) & SO_ACCEPTCON) !== 0;
    sockets.push({
      protocol: 'unix',
      localAddress: '',
      localPort: 0,
      remoteAddress: '',
      remotePort: 0,
      state: listening ? 'LISTEN' : (UNIX_STATES[m[3]] ?? m[3]),
      inode: Number(m[4]),
      path: m[5] ?? '',
      type: UNIX_TYPES[m[2]] ?? m[2],
      fds: [],
    });
  }
  return { sockets, truncated: false };
}

function parseFdinfo(text: string): { flags: string; pos: number; mntId: number } {
  const fields = parseStatus(text);
  return { flags: fields.flags ?? '', pos: Number(fields.pos ?? -1), mntId: Number(fields.mnt_id ?? -1) };
}

const SOCKET_TARGET = /^socket:\[(\d+)\]$/;

/** Collects facts of one process; see the module comment for what it never does. */
export async function collectProcessFacts(pid: number, options: ProcessFactsOptions = {}): Promise<ProcessFacts> {
  if (!Number.isSafeInteger(pid) || pid <= 0) throw new Error(`not a pid: ${pid}`);
  const procRoot = options.procRoot ?? DEFAULT_PROCESS_FACTS.procRoot;
  const maxBytes = options.maxBytes ?? DEFAULT_PROCESS_FACTS.maxBytes;
  const maxFds = options.maxFds ?? DEFAULT_PROCESS_FACTS.maxFds;
  const maxSockets = options.maxSockets ?? DEFAULT_PROCESS_FACTS.maxSockets;
  const redact = envRedactor(options.redactEnv ?? DEFAULT_PROCESS_FACTS.redactEnv);
  const dir = path.join(procRoot, String(pid));
  const facts: ProcessFacts = {
    pid,
    exited: false,
    comm: '',
    args: [],
    exe: '',
    cwd: '',
    root: '',
    status: {},
    uid: null,
    gid: null,
    startedAt: '',
    startTicks: -1,
    environ: [],
    cgroup: [],
    mounts: [],
    fds: [],
    sockets: [],
    namespaces: {},
    truncated: [],
    errors: [],
  };
  const step = async (what: string, fn: () => Promise<void>): Promise<void> => {
    try {
      await fn();
    } catch (err) {
      facts.errors.push(`${what}: ${code(err)}`);
    }
  };
  const bytes = async (name: string, cap = maxBytes): Promise<Buffer> => {
    const { bytes: b, truncated } = await readBoundedBytes(path.join(dir, name), cap);
    if (truncated) facts.truncated.push(name);
    return b;
  };
  const text = async (name: string, cap = maxBytes): Promise<string> => (await bytes(name, cap)).toString('utf8');
  const link = (name: string): Promise<string> => fs.promises.readlink(path.join(dir, name));

  let statText = '';
  try {
    statText = await readBoundedFile(path.join(dir, 'stat'), MAX_SMALL);
  } catch (err) {
    facts.exited = true;
    facts.errors.push(`stat: ${code(err)}`);
    return facts;
  }
  facts.startTicks = startTicksOf(statText);
  await step('start time', async () => {
    const uptime = await readBoundedFile(path.join(procRoot, 'uptime'), MAX_SMALL);
    facts.startedAt = new Date(processStartMs(statText, uptime, Date.now())).toISOString();
  });
  await step('comm', async () => {
    facts.comm = (await text('comm', MAX_SMALL)).replace(/\n$/, '');
  });
  await step('cmdline', async () => {
    const raw = await bytes('cmdline');
    facts.args = splitNul(raw).map((a) => a.toString('utf8'));
    if (!isUtf8(raw)) facts.argsBase64 = raw.toString('base64');
  });
  await step('exe', async () => {
    facts.exe = await link('exe');
  });
  await step('cwd', async () => {
    facts.cwd = await link('cwd');
  });
  await step('root', async () => {
    facts.root = await link('root');
  });
  await step('status', async () => {
    facts.status = parseStatus(await text('status', MAX_SMALL));
    facts.uid = idSet(facts.status.Uid);
    facts.gid = idSet(facts.status.Gid);
  });
  await step('environ', async () => {
    facts.environ = parseEnviron(await bytes('environ'), redact);
  });
  await step('cgroup', async () => {
    facts.cgroup = parseProcCgroupLines(await text('cgroup', MAX_SMALL));
  });
  await step('mountinfo', async () => {
    facts.mounts = parseMountinfo(await text('mountinfo'));
  });
  await step('ns', async () => {
    const names = (await fs.promises.readdir(path.join(dir, 'ns'))).sort();
    for (const name of names.slice(0, 32)) {
      await step(`ns/${name}`, async () => {
        const m = /:\[(\d+)\]$/.exec(await link(`ns/${name}`));
        if (m) facts.namespaces[name] = Number(m[1]);
      });
    }
  });
  await step('fd', async () => {
    const fds = (await fs.promises.readdir(path.join(dir, 'fd')))
      .map(Number)
      .filter(Number.isSafeInteger)
      .sort((a, b) => a - b);
    if (fds.length > maxFds) facts.truncated.push('fd');
    for (const fd of fds.slice(0, maxFds)) {
      const fact: FdFact = { fd, target: '', flags: '', pos: -1, mntId: -1 };
      try {
        fact.target = await link(`fd/${fd}`);
        Object.assign(fact, parseFdinfo(await text(`fdinfo/${fd}`, MAX_SMALL)));
      } catch (err) {
        // closed meanwhile: the fd is not open any more, nothing to say about it
        if (code(err) === 'ENOENT') continue;
        facts.errors.push(`fd/${fd}: ${code(err)}`);
      }
      facts.fds.push(fact);
    }
  });
  const fdsByInode = new Map<number, number[]>();
  for (const f of facts.fds) {
    const m = SOCKET_TARGET.exec(f.target);
    if (m === null) continue;
    const inode = Number(m[1]);
    const list = fdsByInode.get(inode) ?? [];
    list.push(f.fd);
    fdsByInode.set(inode, list);
  }
  for (const table of ['tcp', 'tcp6', 'udp', 'udp6', 'unix'] as const) {
    await step(`net/${table}`, async () => {
      const t = await text(`net/${table}`);
      const { sockets, truncated } = table === 'unix' ? parseUnixTable(t, maxSockets) : parseInetTable(t, table, maxSockets);
      if (truncated) facts.truncated.push(`net/${table}`);
      for (const s of sockets) s.fds = fdsByInode.get(s.inode) ?? [];
      facts.sockets.push(...sockets);
    });
  }

  // the same process still? (gone, or a new one under the same pid)
  try {
    const again = await readBoundedFile(path.join(dir, 'stat'), MAX_SMALL);
    if (startTicksOf(again) !== facts.startTicks) facts.exited = true;
  } catch {
    facts.exited = true;
  }
  return facts;
}

interface ProcRow {
  pid: number;
  ppid: number;
  nspid: number;
  comm: string;
  exePath: string;
  args: string[];
}

/** The few facts a tree shows, or null when the process is gone. */
async function procRow(procRoot: string, pid: number): Promise<ProcRow | null> {
  const dir = path.join(procRoot, String(pid));
  let status: Record<string, string>;
  try {
    status = parseStatus(await readBoundedFile(path.join(dir, 'status'), MAX_SMALL));
  } catch {
    return null;
  }
  const nspids = (status.NSpid ?? '').split(/\s+/).map(Number);
  const row: ProcRow = {
    pid,
    ppid: Number(status.PPid ?? 0),
    nspid: nspids.length > 0 && Number.isSafeInteger(nspids[nspids.length - 1]) ? nspids[nspids.length - 1] : pid,
    comm: status.Name ?? '',
    exePath: '',
    args: [],
  };
  try {
    row.comm = (await readBoundedFile(path.join(dir, 'comm'), MAX_SMALL)).replace(/\n$/, '');
  } catch {
    // status's Name stays
  }
  try {
    row.exePath = await fs.promises.readlink(path.join(dir, 'exe'));
    if (row.exePath.length > MAX_LINK) row.exePath = row.exePath.slice(0, MAX_LINK);
  } catch {
    // a zombie, or a kernel thread: no exe
  }
  try {
    row.args = splitNul((await readBoundedBytes(path.join(dir, 'cmdline'), MAX_SMALL)).bytes).map((a) => a.toString('utf8'));
  } catch {
    // exited meanwhile
  }
  return row;
}

async function readPids(file: string): Promise<number[]> {
  const text = (await readBoundedBytes(file, 4 << 20)).bytes.toString('utf8');
  return text
    .split('\n')
    .filter((l) => l !== '')
    .map(Number)
    .filter((p) => Number.isSafeInteger(p) && p > 0);
}

/** Pids of a cgroup and its descendants (a container may nest cgroups); never through a symlink. */
async function cgroupPids(dir: string, maxDepth: number, max: number): Promise<number[]> {
  const pids: number[] = [];
  const walk = async (at: string, depth: number): Promise<void> => {
    pids.push(...(await readPids(path.join(at, 'cgroup.procs'))));
    if (depth >= maxDepth || pids.length >= max) return;
    let entries: fs.Dirent[];
    try {
      entries = await fs.promises.readdir(at, { withFileTypes: true });
    } catch {
      return; // removed meanwhile
    }
    for (const e of entries) {
      if (!e.isDirectory()) continue;
      try {
        await walk(path.join(at, e.name), depth + 1);
      } catch {
        // a child cgroup removed meanwhile
      }
    }
  };
  await walk(dir, 0);
  return pids.slice(0, max);
}

/** Host pids whose pid namespace is initPid's (a scan of procRoot). */
async function pidNamespacePids(procRoot: string, initPid: number, max: number): Promise<number[]> {
  const target = await fs.promises.readlink(path.join(procRoot, String(initPid), 'ns/pid'));
  const pids: number[] = [];
  for (const name of await fs.promises.readdir(procRoot)) {
    const pid = Number(name);
    if (!/^\d+$/.test(name) || !Number.isSafeInteger(pid)) continue;
    try {
      if ((await fs.promises.readlink(path.join(procRoot, name, 'ns/pid'))) === target) pids.push(pid);
    } catch {
      // exited, or not ours to read
    }
    if (pids.length >= max) break;
  }
  return pids;
}

export type ProcessTreeTarget = { initPid: number } | { cgroupPath: string };

export interface ProcessTree {
  /** Processes whose parent is not in the container are roots (the init first); children by pid. */
  tree: ContainerProcessNode[];
  source: 'cgroup' | 'pid-namespace';
  errors: string[];
}

/** A cgroup path under the cgroup2 root: relative, no "..". */
function cgroupDir(cgroupRoot: string, cgroupPath: string): string {
  const parts = cgroupPath.split('/').filter((p) => p !== '' && p !== '.');
  if (parts.includes('..')) throw new Error(`cgroup path ${JSON.stringify(cgroupPath)} leaves the cgroup root`);
  return path.join(cgroupRoot, ...parts);
}

/**
 * Every process of a container, nested by parent (like `checkpointctl inspect
 * --ps-tree`): from its cgroup2 directory's cgroup.procs (and descendants);
 * given an init pid, from that pid's cgroup2 path, or, when it has none (no
 * cgroup2 placement), from its pid namespace.
 */
export async function containerProcessTree(target: ProcessTreeTarget, options: ProcessTreeOptions = {}): Promise<ProcessTree> {
  const procRoot = options.procRoot ?? DEFAULT_PROCESS_TREE.procRoot;
  const cgroupRoot = options.cgroupRoot ?? DEFAULT_PROCESS_TREE.cgroupRoot;
  const max = options.maxProcesses ?? DEFAULT_PROCESS_TREE.maxProcesses;
  const maxDepth = options.maxCgroupDepth ?? DEFAULT_PROCESS_TREE.maxCgroupDepth;
  const errors: string[] = [];
  let pids: number[] = [];
  let source: ProcessTree['source'] = 'cgroup';
  if ('cgroupPath' in target) {
    pids = await cgroupPids(cgroupDir(cgroupRoot, target.cgroupPath), maxDepth, max);
  } else {
    const initPid = target.initPid;
    if (!Number.isSafeInteger(initPid) || initPid <= 0) throw new Error(`not a pid: ${initPid}`);
    const lines = parseProcCgroupLines(await readBoundedFile(path.join(procRoot, String(initPid), 'cgroup'), MAX_SMALL));
    const v2 = lines.find((l) => l.hierarchy === 0 && l.controllers.length === 0);
    if (v2 !== undefined && v2.path !== '/' && v2.path !== '') {
      try {
        pids = await cgroupPids(cgroupDir(cgroupRoot, v2.path), maxDepth, max);
      } catch (err) {
        errors.push(`cgroup ${v2.path}: ${code(err)}`);
      }
    }
    if (pids.length === 0) {
      source = 'pid-namespace';
      pids = await pidNamespacePids(procRoot, initPid, max);
    }
  }
  if (pids.length >= max) errors.push(`more than ${max} processes: the tree lists the first ${max}`);

  const rows = new Map<number, ContainerProcessNode>();
  for (const pid of [...new Set(pids)].sort((a, b) => a - b)) {
    const row = await procRow(procRoot, pid);
    if (row !== null) rows.set(pid, { ...row, children: [] });
  }
  const tree: ContainerProcessNode[] = [];
  for (const node of rows.values()) {
    const parent = rows.get(node.ppid);
    if (parent !== undefined && parent !== node) parent.children.push(node);
    else tree.push(node);
  }
  return { tree, source, errors };
}

function quoteArg(arg: string): string {
  return arg !== '' && /^[\w@%+=:,./-]+$/.test(arg) ? arg : `'${arg.replace(/'/g, `'\\''`)}'`;
}

/**
 * The tree as text for `amber inspect`, one process a line:
 *   [1] sh  pid 4242  /bin/busybox  sh -c 'sleep 100 & wait'
 *   ├── [2] sleep  pid 4250  ...
 * (pid inside the container in brackets, then the host pid). Escaped: every
 * field is the workload's.
 */
export function renderProcessTree(tree: readonly ContainerProcessNode[]): string {
  const lines: string[] = [];
  const visit = (node: ContainerProcessNode, prefix: string, last: boolean, root: boolean): void => {
    const branch = root ? '' : last ? '└── ' : '├── ';
    const args = node.args.map(quoteArg).join(' ');
    lines.push(clean(`${prefix}${branch}[${node.nspid}] ${node.comm}  pid ${node.pid}  ${node.exePath || '-'}  ${args}`.trimEnd()));
    const childPrefix = root ? prefix : prefix + (last ? '    ' : '│   ');
    node.children.forEach((c, i) => visit(c, childPrefix, i === node.children.length - 1, false));
  };
  tree.forEach((n) => visit(n, '', true, true));
  return lines.join('\n') + (lines.length > 0 ? '\n' : '');
}
