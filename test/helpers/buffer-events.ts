/** Event builders for the buffer tests: every contract field set, overridable. */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import type {
  AcceptEvent,
  AmberEvent,
  CommonFields,
  ConnectEvent,
  DnsEvent,
  ExecEvent,
  ExitEvent,
  ForkEvent,
  OpenEvent,
} from '../../src/sensor/events';

export const CONTAINER_A = 'a1b2c3d4e5f6'.padEnd(64, '0');
export const CONTAINER_B = 'b7c8d9e0f1a2'.padEnd(64, '1');
/** Some fixed instant (2024-05-01T12:00:00Z) in ns. */
export const T0 = Date.UTC(2024, 4, 1, 12, 0, 0) * 1e6;
/** For writable buffers holding T0-era events, which the default 24 h maxAge would delete. */
export const KEEP_OLD = { maxAgeMs: 100 * 365 * 86_400_000 };

function common(ts: number, over: Partial<CommonFields>): Omit<CommonFields, 'type'> {
  return {
    ts,
    pid: 100,
    tid: 100,
    ppid: 1,
    uid: 0,
    gid: 0,
    comm: 'sh',
    cgroupId: 4242,
    containerId: CONTAINER_A,
    mntns: 4026531840,
    netns: 4026531992,
    ...over,
  };
}

export function execEvent(ts: number, over: Partial<ExecEvent> = {}): ExecEvent {
  return {
    ...common(ts, over),
    type: 'exec',
    filename: '/bin/ls',
    exePath: '/usr/bin/ls',
    args: ['ls', '-la', '/tmp'],
    argsTruncated: false,
    upperLayer: false,
    fileless: false,
    script: '',
    pathTruncated: false,
    ...over,
  };
}

export function exitEvent(ts: number, over: Partial<ExitEvent> = {}): ExitEvent {
  return { ...common(ts, over), type: 'exit', exitCode: 0, signal: 0, ...over };
}

export function forkEvent(ts: number, over: Partial<ForkEvent> = {}): ForkEvent {
  return { ...common(ts, over), type: 'fork', childPid: 101, ...over };
}

export function openEvent(ts: number, over: Partial<OpenEvent> = {}): OpenEvent {
  return {
    ...common(ts, over),
    type: 'open',
    path: '/etc/passwd',
    flags: 0,
    flagNames: ['O_RDONLY'],
    mode: 0,
    ret: 3,
    pathTruncated: false,
    ...over,
  };
}

export function connectEvent(ts: number, over: Partial<ConnectEvent> = {}): ConnectEvent {
  return {
    ...common(ts, over),
    type: 'connect',
    proto: 'tcp',
    family: 4,
    saddr: '10.0.0.2',
    sport: 40000,
    daddr: '10.0.0.9',
    dport: 443,
    ret: 0,
    ...over,
  };
}

export function acceptEvent(ts: number, over: Partial<AcceptEvent> = {}): AcceptEvent {
  return {
    ...common(ts, over),
    type: 'accept',
    proto: 'tcp',
    family: 6,
    saddr: 'fd00::2',
    sport: 8080,
    daddr: 'fd00::9',
    dport: 51000,
    ret: 5,
    ...over,
  };
}

export function dnsEvent(ts: number, over: Partial<DnsEvent> = {}): DnsEvent {
  return {
    ...common(ts, over),
    type: 'dns',
    proto: 'udp',
    family: 4,
    saddr: '10.0.0.2',
    sport: 53000,
    daddr: '10.96.0.10',
    dport: 53,
    qr: 'R',
    id: 4660,
    name: 'example.com',
    qtype: 'A',
    rcode: 'NOERROR',
    answers: [{ type: 'A', data: '93.184.216.34' }],
    answersTruncated: false,
    latencyNs: 1_250_000,
    ...over,
  };
}

/** One event of every type (and both DNS shapes), 1 µs apart from `ts`. */
export function oneOfEach(ts: number): AmberEvent[] {
  return [
    execEvent(ts),
    exitEvent(ts + 1000, { exitCode: -1, signal: 9 }),
    forkEvent(ts + 2000),
    openEvent(ts + 3000, { ret: -13, path: '/root/.ssh/id_rsa' }),
    connectEvent(ts + 4000),
    acceptEvent(ts + 5000),
    dnsEvent(ts + 6000),
    dnsEvent(ts + 7000, { qr: 'Q', rcode: '', answers: [], latencyNs: undefined }),
  ].map(dropUndefined);
}

/** Open events whose `pid` is a sequence number and ts = base + seq µs: easy to check for gaps. */
export function sequenceEvents(from: number, count: number, baseTs = T0): OpenEvent[] {
  const events: OpenEvent[] = [];
  for (let seq = from; seq < from + count; seq++) events.push(openEvent(baseTs + seq * 1000, { pid: seq, tid: seq }));
  return events;
}

function dropUndefined<T extends object>(ev: T): T {
  return Object.fromEntries(Object.entries(ev).filter(([, v]) => v !== undefined)) as T;
}

export async function collect<T>(iterable: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const item of iterable) out.push(item);
  return out;
}

export async function tempDir(prefix = 'amber-buffer-'): Promise<{ dir: string; cleanup: () => Promise<void> }> {
  const dir = await mkdtemp(path.join(tmpdir(), prefix));
  return { dir, cleanup: () => rm(dir, { recursive: true, force: true }) };
}
