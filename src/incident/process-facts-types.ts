/**
 * What process/<pid>.json holds (ProcessFacts), written by the capture's facts
 * step, read by `amber inspect`. Everything here comes from the watched
 * workload and is hostile text: escape it before it reaches a terminal.
 */
import type { MountinfoEntry } from '../containers/metadata-mountinfo';

export interface EnvVar {
  name: string;
  /** "[redacted]" when the name matched the redaction list. */
  value: string;
  redacted: boolean;
  /** The raw NAME=VALUE bytes, base64, when they are not UTF-8 (never for a redacted one). */
  base64?: string;
}

export interface FdFact {
  fd: number;
  /** readlink of /proc/<pid>/fd/<fd>: a path, "socket:[inode]", "pipe:[inode]", "anon_inode:[eventfd]"... */
  target: string;
  /** From fdinfo: the open flags, octal as the kernel prints them ("" unread). */
  flags: string;
  pos: number;
  mntId: number;
}

export type SocketProtocol = 'tcp' | 'tcp6' | 'udp' | 'udp6' | 'unix';

export interface SocketFact {
  protocol: SocketProtocol;
  /** IP sockets: address and port; unix sockets: "" and 0. */
  localAddress: string;
  localPort: number;
  remoteAddress: string;
  remotePort: number;
  /** TCP: LISTEN, ESTABLISHED...; UDP: UNCONN or ESTABLISHED; unix: LISTEN, CONNECTED, UNCONNECTED... */
  state: string;
  inode: number;
  /** unix sockets: the bound path ("@name" abstract, "" none). */
  path: string;
  /** unix sockets: stream, dgram or seqpacket. */
  type: string;
  /** The process's fds holding this socket (empty: another process of the namespace holds it). */
  fds: number[];
}

export interface IdSet {
  real: number;
  effective: number;
  saved: number;
  filesystem: number;
}

export interface ProcessFacts {
  pid: number;
  /** The process went away (or its pid was reused) during collection: the rest is what was read before. */
  exited: boolean;
  comm: string;
  args: string[];
  /** The raw cmdline, base64, when it is not UTF-8 (args then hold U+FFFD in its place). */
  argsBase64?: string;
  /** readlink of exe, cwd and root ("" unreadable); never followed. */
  exe: string;
  cwd: string;
  root: string;
  /** /proc/<pid>/status, key: value. */
  status: Record<string, string>;
  uid: IdSet | null;
  gid: IdSet | null;
  /** ISO 8601 ("" unknown). */
  startedAt: string;
  /** Clock ticks since boot, /proc/<pid>/stat field 22: with the pid, names the process. */
  startTicks: number;
  environ: EnvVar[];
  cgroup: Array<{ hierarchy: number; controllers: string[]; path: string }>;
  mounts: MountinfoEntry[];
  fds: FdFact[];
  /** Every socket of the process's network namespace (bounded). */
  sockets: SocketFact[];
  /** Inode of each /proc/<pid>/ns/* link. */
  namespaces: Record<string, number>;
  /** Files cut at the size cap, lists cut at their bound ("environ", "fds", "sockets:tcp"...). */
  truncated: string[];
  /** What could not be read and why. */
  errors: string[];
}
