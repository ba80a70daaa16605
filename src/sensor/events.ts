/**
 * Amber's events as every consumer sees them (buffer, detectors, API, CLI).
 * Field names are the public contract: the same in JSON output, the buffer
 * and the API. Decoded from the kernel's records in records.ts.
 */

/**
 * The order is part of the on-disk format: each buffer block's frame header
 * stores its events per type as an array in this order (`typeCounts`, counted
 * by src/buffer/block-codec.ts, written and read by src/buffer/frame.ts, used
 * to skip blocks in queries by type and summed by `buffer stats`). Append new
 * types at the end; never reorder or remove one, or stored counts are read
 * under the wrong types.
 */
export const EVENT_TYPES = ['exec', 'exit', 'fork', 'open', 'connect', 'accept', 'dns', 'drift', 'alert'] as const;
export type EventType = (typeof EVENT_TYPES)[number];
/** What the kernel reports (the sensor's types). */
export const SENSOR_EVENT_TYPES = ['exec', 'exit', 'fork', 'open', 'connect', 'accept', 'dns'] as const satisfies readonly EventType[];
export type SensorEventType = (typeof SENSOR_EVENT_TYPES)[number];
/** What the detector (src/detect) makes from them: findings. */
export const FINDING_TYPES = ['drift', 'alert'] as const satisfies readonly EventType[];
export type FindingType = (typeof FINDING_TYPES)[number];

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

/*
 * Invalid UTF-8: paths and arguments are bytes in the kernel. When a field's
 * bytes are not valid UTF-8, its text has U+FFFD in their place and the bytes
 * themselves are kept beside it, base64, in `<field>Raw`; the field is absent
 * otherwise.
 */

export interface ExecEvent extends CommonFields {
  type: 'exec';
  /**
   * The path as the kernel's exec got it (bprm->filename): as passed to execve,
   * "/dev/fd/<fd>/<path>" for execveat with a relative path, "/dev/fd/<fd>" for fexecve.
   */
  filename: string;
  /**
   * The executed file as /proc/<pid>/exe shows it, in the process's (container's)
   * view: "/memfd:<name> (deleted)" for a memfd, "<path> (deleted)" for an unlinked
   * file. For a script, the interpreter's file.
   */
  exePath: string;
  /** The kernel's final argv: for a script, the interpreter's ([interpreter, optional arg, script as passed, args...]). */
  args: string[];
  argsTruncated: boolean;
  /** The executable is on the overlayfs upper layer: written after the container started. */
  upperLayer: boolean;
  /** memfd or deleted file. */
  fileless: boolean;
  /**
   * The script an interpreter runs (shebang, binfmt_misc): the filename made absolute
   * against the caller's cwd ("." and ".." resolved as text); "" when no interpreter.
   */
  script: string;
  /** filename, exePath or the cwd behind script was cut (AMBER_PATH_MAX, or deeper than the kernel walks). */
  pathTruncated: boolean;
  filenameRaw?: string;
  exePathRaw?: string;
  /** The whole argv as captured, NUL-separated. */
  argsRaw?: string;
  scriptRaw?: string;
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
  /** path was cut at AMBER_PATH_MAX (1024 bytes; the rest is lost). */
  pathTruncated: boolean;
  pathRaw?: string;
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
  /** The answer section, in order. */
  answers: DnsAnswer[];
  /** The message was cut (at the capture limit) before its last answer: answers is not the whole list. */
  answersTruncated: boolean;
  /** On responses paired with their query: response ts - query ts. */
  latencyNs?: number;
}

/**
 * One answer record. data in presentation (zone file) form: A/AAAA an address;
 * CNAME, NS, PTR a name; MX "<preference> <name>"; SRV "<priority> <weight>
 * <port> <target>"; TXT each string quoted ("\"a\" \"b\""), with " and \ escaped
 * and bytes outside printable ASCII as \DDD; any other type the RFC 3597
 * form "\# <length> <hex>".
 */
export interface DnsAnswer {
  type: string;
  data: string;
}

/** What a finding asks for (src/detect/rules.ts): only recorded, an alert, or an incident (evidence capture). */
export type Action = 'record' | 'alert' | 'incident';

/** One process of a finding's ancestry, from the process table (or /proc for processes older than the agent). */
export interface ProcessInfo {
  pid: number;
  /** Its parent (the next entry, unless that one could not be found: gone before the agent saw it). */
  ppid: number;
  comm: string;
  /** "" when unknown (a process the agent never saw exec and that is gone). */
  exePath: string;
  args: string[];
}

/** The container and pod a finding happened in, from the metadata store ("" / null while unknown). */
export interface FindingContainer {
  runtime: string;
  name: string;
  image: string;
  imageId: string;
  startedAt: string;
  pod: { name: string; namespace: string; uid: string; labels: Record<string, string> } | null;
}

/** Facts about a file's inode (stat), for tuning findings. Times are ns since the epoch. */
export interface FileFacts {
  size: number;
  mode: number;
  mtime: number;
  ctime: number;
}

/**
 * A container process executed a file that did not come from its image.
 * The common fields are the exec's (pid, comm, containerId, ts...).
 */
export interface DriftEvent extends CommonFields {
  type: 'drift';
  /** What the rules decided (the highest action of the matching rules; "record" when none matched). */
  action: Action;
  /** The rules that matched (exceptions applied), in rule-file order. */
  rules: string[];
  /**
   * Why: "upper-layer" (written on the overlay's upper layer), "fileless" (memfd or
   * deleted), "writable-mount" (on a writable mount other than the image, written after start).
   */
  reason: 'upper-layer' | 'fileless' | 'writable-mount';
  /** Which file drifted: the executable, or the script an interpreter runs. */
  subject: 'executable' | 'script';
  /** The drifted file in the container's view (exePath or script). */
  path: string;
  /**
   * "created": only the upper layer (or the writable mount) has it; "modified": the image has the
   * same path too (written in place or copied up, e.g. by a chmod); "fileless"; "unknown".
   */
  change: 'created' | 'modified' | 'fileless' | 'unknown';
  /** The drifted file as found (stat of the opened file); null when it could not be read. */
  file: FileFacts | null;
  /** file.mtime - container start, ns (negative: older than the container; null: unknown). */
  mtimeSinceStartNs: number | null;
  ctimeSinceStartNs: number | null;
  /** The image's own copy of the same path (topmost lower layer that has it); null when none. */
  imageFile: FileFacts | null;
  /** SHA-256 of the drifted file (hex), "" when not hashed (see hashError). */
  sha256: string;
  /** Bytes hashed (the file's size when hashed whole). */
  hashedBytes: number;
  /** "" when hashed; otherwise why not: "exited before hashing", "larger than the hash cap", ... */
  hashError: string;
  /**
   * What was hashed: "exe" the process's own executable (/proc/<pid>/exe, opened when the exec was
   * seen); "upperdir" the file on the upper layer, because the process had already exited (only when
   * its ctime is not after the exec: the bytes that ran); "script" the script on the upper layer; "" none.
   */
  hashedFrom: 'exe' | 'upperdir' | 'script' | '';
  /** The exec: filename, exePath, args and script as the kernel reported them. */
  exec: { filename: string; exePath: string; args: string[]; script: string };
  /** The process, then its parent, ... up to the container's init. */
  ancestry: ProcessInfo[];
  containerMetadata: FindingContainer | null;
}

/** An event matched a rule whose action is alert or incident. Common fields are the event's. */
export interface AlertEvent extends CommonFields {
  type: 'alert';
  action: Action;
  /** The rules that matched, in rule-file order. */
  rules: string[];
  /** The matching event, whole. */
  event: AmberEvent;
  ancestry: ProcessInfo[];
  containerMetadata: FindingContainer | null;
}

export type AmberEvent =
  | DriftEvent
  | AlertEvent
  | ExecEvent
  | ExitEvent
  | ForkEvent
  | OpenEvent
  | ConnectEvent
  | AcceptEvent
  | DnsEvent;

export type EventOf<T extends EventType> = Extract<AmberEvent, { type: T }>;
