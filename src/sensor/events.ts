/**
 * Amber's events as every consumer sees them (buffer, detectors, API, CLI).
 * Field names are the public contract: the same in JSON output, the buffer
 * and the API. Decoded from the kernel's records in records.ts.
 */

export const EVENT_TYPES = ['exec', 'exit', 'fork', 'open', 'connect', 'accept', 'dns'] as const;
export type EventType = (typeof EVENT_TYPES)[number];

export interface CommonFields {
  type: EventType;
  /** Nanoseconds since the Unix epoch (a float64: exact to ~256 ns). */
  ts: number;
  /** Thread group id, host pid namespace. */
  pid: number;
  tid: number;
  ppid: number;
  uid: number;
  gid: number;
  comm: string;
  /** cgroup v2 id (inode number of the cgroup directory). */
  cgroupId: number;
  /** Container ID, "" for host processes. */
  containerId: string;
  mntns: number;
  netns: number;
}

export interface ExecEvent extends CommonFields {
  type: 'exec';
  /** The path as passed to execve. */
  filename: string;
  /** Absolute path of the executed file in the process's (container's) view, from the kernel's dentries. */
  exePath: string;
  args: string[];
  argsTruncated: boolean;
  /** The executable is on the overlayfs upper layer: written after the container started. */
  upperLayer: boolean;
  /** memfd or deleted file. */
  fileless: boolean;
}

export interface ExitEvent extends CommonFields {
  type: 'exit';
  exitCode: number;
  /** Signal that ended the process, 0 when it exited. */
  signal: number;
}

export interface ForkEvent extends CommonFields {
  type: 'fork';
  childPid: number;
}

export interface OpenEvent extends CommonFields {
  type: 'open';
  /** Absolute where it could be resolved, otherwise as passed. */
  path: string;
  flags: number;
  flagNames: string[];
  mode: number;
  /** fd, or -errno. */
  ret: number;
}

export type Proto = 'tcp' | 'udp';

export interface SockFields {
  proto: Proto;
  family: 4 | 6;
  saddr: string;
  sport: number;
  daddr: string;
  dport: number;
}

export interface ConnectEvent extends CommonFields, SockFields {
  type: 'connect';
  ret: number;
}

export interface AcceptEvent extends CommonFields, SockFields {
  type: 'accept';
  ret: number;
}

export interface DnsEvent extends CommonFields, SockFields {
  type: 'dns';
  /** Q = query (sent), R = response (received, or TIMEOUT). */
  qr: 'Q' | 'R';
  id: number;
  name: string;
  /** A, AAAA, CNAME, ... or TYPE<n>. */
  qtype: string;
  /** NOERROR, NXDOMAIN, ... ; TIMEOUT when no response came in time; "" on queries. */
  rcode: string;
  /** Addresses (A/AAAA) and names (CNAME) of the answer section. */
  answers: string[];
  /** On responses paired with their query: response ts - query ts. */
  latencyNs?: number;
}

export type AmberEvent =
  | ExecEvent
  | ExitEvent
  | ForkEvent
  | OpenEvent
  | ConnectEvent
  | AcceptEvent
  | DnsEvent;

export type EventOf<T extends EventType> = Extract<AmberEvent, { type: T }>;
