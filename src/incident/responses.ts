/**
 * Incident responses, each off unless a rule asks for it: kill a container
 * (every process of its cgroup), or cut its network (bpf/netcut.bpf.c
 * attached to its cgroup in both directions) and release the cut.
 *
 * A cut is pinned on bpffs under amber/netcut/<incident id>: the pins, not
 * the agent, hold it, so an agent crash or restart never releases an
 * attacker's container, and `releaseNetwork` works from any later process.
 * Each cut is also recorded in <dataDir>/incidents/.responses/<id>.json.
 * A reboot clears bpffs: `listCuts` then reports the record as not in force.
 *
 * Cgroups are named as /proc/<pid>/cgroup names them (relative to the cgroup
 * v2 root), walked one component at a time without following links, opened
 * O_NOFOLLOW and checked to be the directory the walk found, on the cgroup v2
 * mount. The root cgroup and the agent's own (or an ancestor of it) are refused.
 * Every call returns what it did, for the bundle's log.
 */
import { execFileSync } from 'node:child_process';
import {
  closeSync,
  constants as C,
  type BigIntStats,
  type Dirent,
  fstatSync,
  lstatSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  rmdirSync,
  statSync,
  unlinkSync,
  writeSync,
} from 'node:fs';
import path from 'node:path';
import { z } from 'zod';
import { ensureDir, readRegular, writeFileAtomic } from '../buffer/datadir';
import { lstatUnder } from '../detect/files';
import { loadBinding, type NativeCutLink, type NativeNetcut } from '../sensor/binding';
import { findCgroup2Root, mountsOfType } from '../sensor/preflight';
import { INCIDENTS_DIR } from './manifest';


/** Cut records: <dataDir>/incidents/.responses/<id>.json (a dot: never taken for an incident). */
export const RESPONSES_DIR = '.responses';
/** Where bpffs is (mounted there when it is not). */
export const DEFAULT_BPFFS = '/sys/fs/bpf';
/** A cut's pins: <bpffs>/amber/netcut/<incident id>/{ingress,egress,drops}. */
export const NETCUT_PIN_DIR = 'amber/netcut';
const PINS = ['ingress', 'egress', 'drops'] as const;

export interface KillOptions {
  /** Use cgroup.kill when the kernel has it (5.14+); false: SIGKILL every pid, round after round. */
  cgroupKill: boolean;
  /** How long to wait for the cgroup to empty before reporting what is left. */
  waitMs: number;
  /** Between two looks at cgroup.procs (and two rounds of SIGKILL). */
  pollMs: number;
}
export const DEFAULT_KILL: KillOptions = { cgroupKill: true, waitMs: 5000, pollMs: 20 };

export interface ResponsesOptions {
  /** The agent's data dir: the cut records go under its incidents/.responses/. */
  dataDir: string;
  /** The bpffs mount for the pins (DEFAULT_BPFFS). */
  bpffs?: string;
  /** The cgroup v2 root (findCgroup2Root() when not given). */
  cgroupRoot?: string;
  kill?: Partial<KillOptions>;
}

export type Direction = 'ingress' | 'egress';

export interface CutLink extends NativeCutLink {
  direction: Direction;
  /** The pinned link on bpffs. */
  pin: string;
}

export interface DropCounts {
  ingress: number;
  egress: number;
}

/** The durable record of a cut (<dataDir>/incidents/.responses/<id>.json). */
export interface CutRecord {
  incidentId: string;
  /** As /proc/<pid>/cgroup names it, relative to the cgroup v2 root. */
  cgroupPath: string;
  /** The cgroup v2 id (its directory's inode number), as events carry it. */
  cgroupId: number;
  pinDir: string;
  links: CutLink[];
  /** RFC 3339. */
  at: string;
  releasedAt: string | null;
  /** Packets dropped, per direction, read at release. */
  drops: DropCounts | null;
}

export interface CutResult extends CutRecord {
  cut: true;
  /** The incident already had this cut in force: nothing new was attached. */
  already: boolean;
  /** Set when the record could not be written; the cut is in force all the same (its pins hold it). */
  recordError?: string;
}

export interface CutState {
  incidentId: string;
  /** null when only the pins are left (no record: a crash between attaching and recording). */
  cgroupPath: string | null;
  cgroupId: number;
  at: string | null;
  /** Both links pinned and their cgroup still there. */
  inForce: boolean;
  pinned: boolean;
  recorded: boolean;
  /** Packets dropped so far, per direction; null when not pinned. */
  drops: DropCounts | null;
  /** Its record could not be read (left where it is); recorded is then false. */
  recordError?: string;
}

export interface ReleaseResult {
  released: boolean;
  incidentId: string;
  cgroupPath: string | null;
  /** The pins removed (ingress, egress, drops). */
  unpinned: string[];
  drops: DropCounts | null;
  at: string;
  /** Why nothing was released. */
  reason?: string;
  /** The record could not be read (left as it is); the pins were removed all the same. */
  recordError?: string;
}

export interface KillResult {
  killed: boolean;
  method: 'cgroup.kill' | 'sigkill';
  cgroupPath: string;
  /** The processes in the cgroup (and its descendants) before the kill, host pids. */
  pids: number[];
  /** sigkill: the pids signalled (over every round). */
  signalled: number[];
  rounds: number;
  /** Still there when waitMs ran out (empty when killed). */
  remaining: number[];
  at: string;
  durationMs: number;
}

/** A response Amber refuses or cannot carry out; the message says which and why. */
export class ResponseError extends Error {
  override name = 'ResponseError';
}

const INCIDENT_ID = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

function checkIncidentId(id: string): void {
  if (typeof id !== 'string' || !INCIDENT_ID.test(id) || id.includes('..')) {
    throw new ResponseError(`invalid incident id ${JSON.stringify(id)}: letters, digits, '.', '_' and '-', at most 128`);
  }
}

const recordSchema = z.object({
  incidentId: z.string(),
  cgroupPath: z.string(),
  cgroupId: z.number(),
  pinDir: z.string(),
  links: z.array(
    z.object({
      direction: z.enum(['ingress', 'egress']),
      linkId: z.number(),
      progId: z.number(),
      cgroupId: z.number(),
      pin: z.string(),
    }),
  ),
  at: z.string(),
  releasedAt: z.string().nullable(),
  drops: z.object({ ingress: z.number(), egress: z.number() }).nullable(),
});

interface OpenCgroup {
  fd: number;
  /** Normalized: "/a/b". */
  path: string;
  id: number;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function errnoOf(err: unknown): string | undefined {
  return (err as NodeJS.ErrnoException).code;
}

export class Responses {
  private readonly dataDir: string;
  private readonly bpffs: string;
  private readonly killOptions: KillOptions;
  private cgroupRootValue: string | undefined;
  private netcutValue: NativeNetcut | undefined;

  constructor(options: ResponsesOptions) {
    this.dataDir = options.dataDir;
    this.bpffs = path.resolve(options.bpffs ?? DEFAULT_BPFFS);
    this.cgroupRootValue = options.cgroupRoot;
    this.killOptions = { ...DEFAULT_KILL, ...options.kill };
  }

  private get cgroupRoot(): string {
    this.cgroupRootValue ??= findCgroup2Root();
    return this.cgroupRootValue;
  }

  private get netcut(): NativeNetcut {
    this.netcutValue ??= loadBinding().netcut;
    return this.netcutValue;
  }

  private get recordsDir(): string {
    return path.join(this.dataDir, INCIDENTS_DIR, RESPONSES_DIR);
  }

  private pinDir(incidentId: string): string {
    return path.join(this.bpffs, NETCUT_PIN_DIR, incidentId);
  }

  /** Cuts the cgroup's network both ways until releaseNetwork, whatever becomes of this process. */
  async cutNetwork(request: { incidentId: string; cgroupPath: string }): Promise<CutResult> {
    const { incidentId } = request;
    checkIncidentId(incidentId);
    const cgroup = this.openCgroup(request.cgroupPath);
    try {
      this.ensurePinParent();
      const pinDir = this.pinDir(incidentId);
      if (isDirectory(pinDir)) {
        const held = this.netcut.inspect(pinDir);
        if (held.ingress?.cgroupId === cgroup.id && held.egress?.cgroupId === cgroup.id) {
          const record = await this.readRecord(incidentId).catch(() => null); // the cut is what counts
          const links = this.cutLinks(pinDir, { ingress: held.ingress, egress: held.egress });
          const at = record?.releasedAt === null ? record.at : new Date().toISOString();
          return { cut: true, already: true, incidentId, cgroupPath: cgroup.path, cgroupId: cgroup.id, pinDir, links, at, releasedAt: null, drops: null };
        }
        const other = held.ingress?.cgroupId || held.egress?.cgroupId;
        if (other) {
          throw new ResponseError(`incident ${incidentId} already cuts another cgroup (id ${other}): release it first`);
        }
        // What a crash between mkdir and attach, or a cgroup since removed, left: cleared, then cut anew.
        unpinAll(pinDir);
      }
      mkdirSync(pinDir, { mode: 0o700 });
      let attached;
      try {
        attached = this.netcut.attach(cgroup.fd, pinDir);
      } catch (err) {
        rmdirSync(pinDir);
        throw err;
      }
      const record: CutRecord = {
        incidentId,
        cgroupPath: cgroup.path,
        cgroupId: cgroup.id,
        pinDir,
        links: this.cutLinks(pinDir, attached),
        at: new Date().toISOString(),
        releasedAt: null,
        drops: null,
      };
      const result: CutResult = { cut: true, already: false, ...record };
      try {
        await this.writeRecord(record);
      } catch (err) {
        // The cut stands: its pins hold it and listCuts finds them; not recording must not free the container.
        result.recordError = (err as Error).message;
      }
      return result;
    } finally {
      closeSync(cgroup.fd);
    }
  }

  /** Removes the cut's pins (the kernel detaches the programs) and marks its record released. */
  async releaseNetwork(incidentId: string): Promise<ReleaseResult> {
    checkIncidentId(incidentId);
    const at = new Date().toISOString();
    // an unreadable record never keeps a cut in place: the pins go, the record is left as it is
    let record: CutRecord | null = null;
    let recordError: string | undefined;
    try {
      record = await this.readRecord(incidentId);
    } catch (err) {
      recordError = (err as Error).message;
    }
    const pinDir = this.pinDir(incidentId);
    let drops: DropCounts | null = null;
    let unpinned: string[] = [];
    if (isDirectory(pinDir)) {
      try {
        drops = this.netcut.inspect(pinDir).drops;
      } catch {
        drops = null; // counts are for the log; the release goes on without them
      }
      unpinned = unpinAll(pinDir);
    }
    const base = { incidentId, cgroupPath: record?.cgroupPath ?? null, unpinned, drops, at, ...(recordError ? { recordError } : {}) };
    if (record === null && unpinned.length === 0) {
      return { released: false, ...base, reason: recordError ? 'no cut pinned for this incident; its record is unreadable' : 'no cut for this incident' };
    }
    if (record !== null && record.releasedAt !== null && unpinned.length === 0) {
      return { released: false, ...base, reason: `already released at ${record.releasedAt}` };
    }
    if (record !== null) {
      await this.writeRecord({ ...record, releasedAt: at, drops });
    }
    if (unpinned.length === 0) {
      return { released: false, ...base, reason: 'the cut was no longer pinned (bpffs cleared by a reboot, or unpinned by hand); record closed' };
    }
    return { released: true, ...base };
  }

  /** The cuts not released: recorded ones (in force or not) and pinned ones without a record. */
  async listCuts(): Promise<CutState[]> {
    const ids = new Set<string>();
    const records = new Map<string, CutRecord>();
    const recordErrors = new Map<string, string>();
    for (const name of listDir(this.recordsDir)) {
      if (!name.endsWith('.json')) continue;
      const id = name.slice(0, -'.json'.length);
      if (!INCIDENT_ID.test(id)) continue;
      let record: CutRecord | null;
      try {
        record = await this.readRecord(id);
      } catch (err) {
        // listed, never dropped: the file stays where it is for someone to look at
        recordErrors.set(id, (err as Error).message);
        ids.add(id);
        continue;
      }
      if (record === null || record.releasedAt !== null) continue;
      records.set(id, record);
      ids.add(id);
    }
    for (const id of listDir(path.join(this.bpffs, NETCUT_PIN_DIR))) {
      if (INCIDENT_ID.test(id) && isDirectory(this.pinDir(id))) ids.add(id);
    }
    const out: CutState[] = [];
    for (const id of [...ids].sort()) {
      const record = records.get(id) ?? null;
      const pinDir = this.pinDir(id);
      const held = isDirectory(pinDir) ? this.netcut.inspect(pinDir) : null;
      const pinned = held !== null && held.ingress !== null && held.egress !== null;
      const cgroupId = record?.cgroupId ?? held?.ingress?.cgroupId ?? held?.egress?.cgroupId ?? 0;
      out.push({
        incidentId: id,
        cgroupPath: record?.cgroupPath ?? null,
        cgroupId,
        at: record?.at ?? null,
        inForce: pinned && held.ingress!.cgroupId !== 0 && held.egress!.cgroupId !== 0,
        pinned,
        recorded: record !== null,
        drops: held?.drops ?? null,
        ...(recordErrors.has(id) ? { recordError: recordErrors.get(id) } : {}),
      });
    }
    return out;
  }

  /**
   * Kills every process of the cgroup and its descendants: cgroup.kill when the kernel has it,
   * else SIGKILL to each pid of cgroup.procs, round after round until none is left or waitMs passes.
   */
  async killContainer(request: { cgroupPath: string }, options: Partial<KillOptions> = {}): Promise<KillResult> {
    const o = { ...this.killOptions, ...options };
    const cgroup = this.openCgroup(request.cgroupPath);
    const started = Date.now();
    const at = new Date(started).toISOString();
    try {
      // the directory as opened: an openat through /proc, never the path again
      const dir = `/proc/self/fd/${cgroup.fd}`;
      const pids = procsUnder(dir);
      const useKillFile = o.cgroupKill && fileExists(dir, 'cgroup.kill');
      const method = useKillFile ? 'cgroup.kill' : 'sigkill';
      const signalled = new Set<number>();
      let rounds = 0;
      if (useKillFile) {
        writeControl(dir, 'cgroup.kill', '1');
        rounds = 1;
      }
      for (let left = procsUnder(dir); left.length > 0 && Date.now() - started < o.waitMs; left = procsUnder(dir)) {
        if (!useKillFile) {
          // a pid could exit and be reused between the read and the kill; cgroup.kill has no such window
          for (const pid of left) {
            try {
              process.kill(pid, 'SIGKILL');
              signalled.add(pid);
            } catch (err) {
              if (errnoOf(err) !== 'ESRCH') throw err;
            }
          }
          rounds++;
        }
        await sleep(o.pollMs);
      }
      const remaining = procsUnder(dir);
      return {
        killed: remaining.length === 0,
        method,
        cgroupPath: cgroup.path,
        pids,
        signalled: [...signalled].sort((a, b) => a - b),
        rounds,
        remaining,
        at,
        durationMs: Date.now() - started,
      };
    } finally {
      closeSync(cgroup.fd);
    }
  }

  private cutLinks(pinDir: string, links: { ingress: NativeCutLink; egress: NativeCutLink }): CutLink[] {
    return (['ingress', 'egress'] as const).map((direction) => ({ direction, ...links[direction], pin: path.join(pinDir, direction) }));
  }

  /** The cgroup's directory, opened without following a link anywhere on the way, never the root or our own. */
  private openCgroup(cgroupPath: string): OpenCgroup {
    if (typeof cgroupPath !== 'string' || !cgroupPath.startsWith('/')) {
      throw new ResponseError(
        `cgroup path ${JSON.stringify(cgroupPath)} must be absolute, as /proc/<pid>/cgroup names it (e.g. /libpod_parent/libpod-<id>)`,
      );
    }
    const parts = cgroupPath.split('/').filter((p) => p !== '');
    if (parts.some((p) => p === '.' || p === '..' || p.includes('\0'))) {
      throw new ResponseError(`cgroup path ${JSON.stringify(cgroupPath)} has '.' or '..' components`);
    }
    if (parts.length === 0) throw new ResponseError('refusing the root cgroup: that is the whole host');
    const normalized = '/' + parts.join('/');
    const own = ownCgroup();
    if (own !== null && (own === normalized || own.startsWith(normalized + '/'))) {
      throw new ResponseError(`refusing cgroup ${normalized}: the agent itself runs in it (${own})`);
    }
    const root = this.cgroupRoot;
    const walked = lstatUnder(root, parts.join('/'));
    if (walked === null || !walked.isDirectory()) {
      throw new ResponseError(`cgroup ${normalized} is not a directory under ${root} (gone, or a symbolic link on the way)`);
    }
    const rootStat = statSync(root, { bigint: true });
    if (walked.dev !== rootStat.dev) throw new ResponseError(`cgroup ${normalized} is not on the cgroup v2 mount at ${root}`);
    let fd: number;
    try {
      fd = openSync(path.join(root, ...parts), C.O_RDONLY | C.O_DIRECTORY | C.O_NOFOLLOW);
    } catch (err) {
      throw new ResponseError(`cgroup ${normalized}: cannot open it (${errnoOf(err) ?? (err as Error).message})`);
    }
    const st: BigIntStats = fstatSync(fd, { bigint: true });
    if (st.ino !== walked.ino || st.dev !== walked.dev) {
      closeSync(fd);
      throw new ResponseError(`cgroup ${normalized} changed while it was being opened`);
    }
    return { fd, path: normalized, id: Number(st.ino) };
  }

  /** bpffs at this.bpffs (mounted when it is not), with amber/netcut made and checked. */
  private ensurePinParent(): void {
    const mounts = mountsOfType(readFileSync('/proc/self/mountinfo', 'utf8'), 'bpf');
    if (!mounts.includes(this.bpffs)) {
      try {
        mkdirSync(this.bpffs, { recursive: true, mode: 0o700 });
        execFileSync('mount', ['-t', 'bpf', 'bpf', this.bpffs], { stdio: 'pipe' });
      } catch (err) {
        const detail = (err as { stderr?: Buffer }).stderr?.toString().trim() || (err as Error).message;
        throw new ResponseError(`bpffs is not mounted at ${this.bpffs} and mounting it failed (${detail}): a cut must be pinned to outlive the agent`);
      }
    }
    let at = this.bpffs;
    for (const part of NETCUT_PIN_DIR.split('/')) {
      at = path.join(at, part);
      try {
        mkdirSync(at, { mode: 0o700 });
      } catch (err) {
        if (errnoOf(err) !== 'EEXIST') throw err;
      }
      const st = lstatSync(at);
      if (!st.isDirectory()) throw new ResponseError(`${at} is not a directory (a link or a pin): refusing to pin there`);
      if (st.uid !== (process.geteuid?.() ?? 0) || (st.mode & 0o022) !== 0) {
        throw new ResponseError(`${at} is not ours alone (uid ${st.uid}, mode ${(st.mode & 0o7777).toString(8)}): refusing to pin there`);
      }
    }
  }

  private async readRecord(incidentId: string): Promise<CutRecord | null> {
    let data: Buffer;
    try {
      data = await readRegular(path.join(this.recordsDir, `${incidentId}.json`), 1 << 20);
    } catch (err) {
      if (errnoOf(err) === 'ENOENT') return null;
      throw err;
    }
    let json: unknown;
    try {
      json = JSON.parse(data.toString('utf8'));
    } catch (err) {
      throw new ResponseError(`cut record of ${incidentId} is not JSON: ${(err as Error).message}`);
    }
    const parsed = recordSchema.safeParse(json);
    if (!parsed.success) throw new ResponseError(`cut record of ${incidentId} is not one Amber wrote: ${parsed.error.message}`);
    return parsed.data;
  }

  private async writeRecord(record: CutRecord): Promise<void> {
    await ensureDir(this.dataDir, true);
    await ensureDir(path.join(this.dataDir, INCIDENTS_DIR), false);
    await ensureDir(this.recordsDir, false);
    await writeFileAtomic(path.join(this.recordsDir, `${record.incidentId}.json`), Buffer.from(JSON.stringify(record, null, 2) + '\n'));
  }
}

/** The agent's own cgroup v2 path, null when it has none ("0::" line missing). */
function ownCgroup(): string | null {
  const line = readFileSync('/proc/self/cgroup', 'utf8')
    .split('\n')
    .find((l) => l.startsWith('0::'));
  if (line === undefined) return null;
  return '/' + line.slice(3).split('/').filter((p) => p !== '').join('/');
}

function isDirectory(p: string): boolean {
  try {
    return lstatSync(p).isDirectory();
  } catch {
    return false;
  }
}

function listDir(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch (err) {
    if (errnoOf(err) === 'ENOENT' || errnoOf(err) === 'ENOTDIR') return [];
    throw err;
  }
}

/** Unpins a cut (the links' last reference: the kernel detaches them) and removes its directory; returns what was unpinned. */
function unpinAll(pinDir: string): string[] {
  const unpinned: string[] = [];
  for (const name of PINS) {
    try {
      unlinkSync(path.join(pinDir, name));
      unpinned.push(name);
    } catch (err) {
      if (errnoOf(err) !== 'ENOENT') throw err;
    }
  }
  rmdirSync(pinDir);
  return unpinned;
}

function fileExists(dir: string, name: string): boolean {
  try {
    return lstatSync(`${dir}/${name}`).isFile();
  } catch {
    return false;
  }
}

/** Opens a cgroup control file of `dir` (an fd's /proc path) without following links or blocking. */
function openControl(dir: string, name: string, flags: number): number {
  const fd = openSync(`${dir}/${name}`, flags | C.O_NOFOLLOW | C.O_NONBLOCK);
  if (!fstatSync(fd).isFile()) {
    closeSync(fd);
    throw new ResponseError(`${name} of the cgroup is not a regular file`);
  }
  return fd;
}

function writeControl(dir: string, name: string, value: string): void {
  const fd = openControl(dir, name, C.O_WRONLY);
  try {
    writeSync(fd, value);
  } finally {
    closeSync(fd);
  }
}

const MAX_CGROUP_DEPTH = 32;

/** The pids of a cgroup and its descendants (host pids: the agent is in the host's PID namespace). */
function procsUnder(dir: string, depth = 0): number[] {
  const pids: number[] = [];
  let text = '';
  try {
    const fd = openControl(dir, 'cgroup.procs', C.O_RDONLY);
    try {
      text = readFileSync(fd, 'utf8');
    } finally {
      closeSync(fd);
    }
  } catch (err) {
    if (errnoOf(err) === 'ENOENT') return pids; // removed meanwhile
    throw err;
  }
  for (const line of text.split('\n')) if (line !== '') pids.push(Number(line));
  if (depth < MAX_CGROUP_DEPTH) {
    let entries: Dirent[] = [];
    try {
      entries = readdirSync(dir, { withFileTypes: true });
    } catch (err) {
      if (errnoOf(err) !== 'ENOENT') throw err;
    }
    for (const e of entries) if (e.isDirectory()) pids.push(...procsUnder(`${dir}/${e.name}`, depth + 1));
  }
  return pids.sort((a, b) => a - b);
}
