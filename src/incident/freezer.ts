/**
 * Freezing a process's cgroup (its container) while its memory is dumped, so
 * the other processes of the container cannot change what is being read.
 * cgroup v2 (cgroup.freeze, which every non-root v2 cgroup has whatever its
 * controllers) is preferred, the v1 freezer (freezer.state) is the fallback.
 *
 * A container is never left frozen: every freeze is recorded durably
 * (<dataDir>/incidents/.frozen/<key>.json, written by rename) before it is
 * written, removed after the thaw, and recover() at the next agent start thaws
 * whatever a killed agent left recorded. Cgroup paths come from
 * /proc/<pid>/cgroup, i.e. from the container: they are walked under the
 * cgroup mount one component at a time without following a link.
 */
import { createHash } from 'node:crypto';
import { constants as C, promises as fsp, readFileSync, statfsSync } from 'node:fs';
import * as path from 'node:path';
import type { Logger } from 'pino';
import { ensureDir, readRegular, writeFileAtomic } from '../buffer/datadir';
import { lstatUnder } from '../detect/files';
import { findCgroup2Root } from '../sensor/preflight';
import { INCIDENTS_DIR } from './manifest';

export const FROZEN_DIR = '.frozen';
export const DEFAULT_FREEZER = {
  /** How long the tasks of a cgroup get to reach the frozen state. */
  timeoutMs: 5000,
  cgroupV1FreezerRoot: '/sys/fs/cgroup/freezer',
} as const;

const CGROUP2_SUPER_MAGIC = 0x63677270;
const CGROUP_SUPER_MAGIC = 0x27e0eb;
const POLL_MS = 5;
const RECORD_MAX_BYTES = 64 << 10;

export type CgroupVersion = 1 | 2;

export interface FrozenCgroup {
  /** The cgroup's directory, under the cgroup mount. */
  path: string;
  /** The cgroup as /proc/<pid>/cgroup names it. */
  cgroup: string;
  version: CgroupVersion;
  /** Frozen by someone else before (e.g. podman pause): left as it was, thaw() does nothing. */
  alreadyFrozen: boolean;
  /** How long the freeze took to settle. */
  frozenMs: number;
  /** Idempotent; the last holder of a cgroup frozen for several dumps thaws it. */
  thaw(): Promise<void>;
}

export interface CgroupFreezerOptions {
  dataDir: string;
  log: Logger;
  /** cgroup2 mount; default: found in /proc/self/mountinfo (/sys/fs/cgroup or /sys/fs/cgroup/unified). */
  cgroupV2Root?: string;
  /** v1 freezer hierarchy mount, used when v2 cannot freeze the process's cgroup. */
  cgroupV1FreezerRoot?: string;
  timeoutMs?: number;
  /** For tests: where /proc/<pid>/cgroup and /proc/self/cgroup are read. */
  procRoot?: string;
}

export class FreezeError extends Error {
  override name = 'FreezeError';
}

interface Target {
  version: CgroupVersion;
  root: string;
  cgroup: string;
  dir: string;
  /** On hybrid hosts, the v1 freezer cgroup of the same process: `podman pause` freezes there. */
  v1Peer?: Target;
}

interface FreezeRecord {
  version: CgroupVersion;
  cgroup: string;
  /** For the operator reading the file: who froze it, when, for which process. */
  pid: number;
  agentPid: number;
  frozenAt: string;
}

interface Held {
  count: number;
  ready: Promise<{ target: Target; alreadyFrozen: boolean; frozenMs: number }>;
}

/** The "<hierarchy-id>:<controllers>:<path>" lines of /proc/<pid>/cgroup: v2 is "0::", v1 names its controllers. */
export function cgroupsOf(text: string): { v2: string | null; freezer: string | null } {
  let v2: string | null = null;
  let freezer: string | null = null;
  for (const line of text.split('\n')) {
    const first = line.indexOf(':');
    const second = line.indexOf(':', first + 1);
    if (first < 0 || second < 0) continue;
    const controllers = line.slice(first + 1, second);
    const at = line.slice(second + 1);
    if (line.slice(0, first) === '0' && controllers === '') v2 = at;
    else if (controllers.split(',').includes('freezer')) freezer = at;
  }
  return { v2, freezer };
}

/** The cgroup path's components, or null when it is the root or not a plain absolute path. */
function components(cgroup: string): string[] | null {
  if (!cgroup.startsWith('/')) return null;
  const parts = cgroup.split('/').filter((p) => p !== '');
  if (parts.length === 0 || parts.some((p) => p === '.' || p === '..')) return null;
  return parts;
}

/** True when `inner` is `outer` or below it. */
function within(inner: string, outer: string): boolean {
  return inner === outer || inner.startsWith(outer.endsWith('/') ? outer : `${outer}/`);
}

export class CgroupFreezer {
  private readonly dataDir: string;
  private readonly log: Logger;
  private readonly v2Root: string | null;
  private readonly v1Root: string;
  private readonly timeoutMs: number;
  private readonly procRoot: string;
  private readonly held = new Map<string, Held>();
  /**
   * Per cgroup, the thaw under way. A freeze of the same cgroup waits for it:
   * started during it, the freeze would take the cgroup for frozen by someone
   * else (and copy memory unfrozen), or write its record just before the
   * thaw's unlink removes it (and a kill -9 would then leave it frozen).
   */
  private readonly thawing = new Map<string, Promise<void>>();

  constructor(options: CgroupFreezerOptions) {
    this.dataDir = options.dataDir;
    this.log = options.log;
    this.timeoutMs = options.timeoutMs ?? DEFAULT_FREEZER.timeoutMs;
    this.procRoot = options.procRoot ?? '/proc';
    this.v1Root = options.cgroupV1FreezerRoot ?? DEFAULT_FREEZER.cgroupV1FreezerRoot;
    let v2 = options.cgroupV2Root ?? null;
    if (v2 === null) {
      try {
        v2 = findCgroup2Root(readFileSync('/proc/self/mountinfo', 'utf8'), false);
      } catch {
        v2 = null;
      }
    }
    this.v2Root = v2;
  }

  private get recordDir(): string {
    return path.join(this.dataDir, INCIDENTS_DIR, FROZEN_DIR);
  }

  /**
   * Freezes the cgroup of pid and resolves once all its tasks are frozen.
   * Rejects (leaving it thawed) when the cgroup is the root, holds the agent,
   * cannot be reached safely, or does not freeze within the timeout.
   */
  async freeze(pid: number): Promise<FrozenCgroup> {
    const target = this.targetOf(pid);
    const key = `${target.version}:${target.cgroup}`;
    let held = this.held.get(key);
    if (held) {
      held.count++;
    } else {
      const thawed = this.thawing.get(key) ?? Promise.resolve();
      held = { count: 1, ready: thawed.then(() => this.freezeTarget(target, pid)) };
      this.held.set(key, held);
      const entry = held;
      entry.ready.catch(() => {
        if (this.held.get(key) === entry) this.held.delete(key);
      });
    }
    const { alreadyFrozen, frozenMs } = await held.ready;
    let thawed = false;
    return {
      path: target.dir,
      cgroup: target.cgroup,
      version: target.version,
      alreadyFrozen,
      frozenMs,
      thaw: async () => {
        if (thawed) return;
        thawed = true;
        const entry = this.held.get(key);
        if (!entry || --entry.count > 0) return;
        this.held.delete(key);
        if (alreadyFrozen) return;
        const thawing = this.thawTarget(target);
        const done = thawing.catch(() => {}); // a failed thaw keeps its record: recover() retries it
        this.thawing.set(key, done);
        void done.then(() => {
          if (this.thawing.get(key) === done) this.thawing.delete(key);
        });
        await thawing;
      },
    };
  }

  /** Thaws every cgroup a previous run recorded as frozen by it; returns their directories. */
  async recover(): Promise<string[]> {
    let names: string[];
    try {
      names = await fsp.readdir(this.recordDir);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw err;
    }
    const thawed: string[] = [];
    for (const name of names.sort()) {
      const file = path.join(this.recordDir, name);
      if (!name.endsWith('.json')) {
        // a record never renamed into place: its freeze was never written
        await fsp.unlink(file).catch(() => {});
        continue;
      }
      let record: FreezeRecord;
      try {
        record = JSON.parse((await readRegular(file, RECORD_MAX_BYTES)).toString('utf8')) as FreezeRecord;
      } catch (err) {
        this.log.error({ event: 'freezer-record-unreadable', file, err: (err as Error).message }, 'unreadable freeze record left in place');
        continue;
      }
      const root = record.version === 2 ? this.v2Root : record.version === 1 ? this.v1Root : null;
      const target = root === null || typeof record.cgroup !== 'string' ? null : this.resolve(record.version, root, record.cgroup);
      if (typeof target === 'string' || target === null) {
        // the cgroup is gone (its container ended) or the record is not ours to act on
        this.log.warn({ event: 'freezer-record-stale', file, cgroup: record.cgroup, reason: target ?? 'unknown cgroup version' }, 'freeze record dropped');
        await fsp.unlink(file).catch(() => {});
        continue;
      }
      await this.thawTarget(target);
      this.log.warn({ event: 'freezer-recovered', cgroup: target.cgroup, dir: target.dir, pid: record.pid }, 'thawed a cgroup a previous run left frozen');
      thawed.push(target.dir);
    }
    return thawed;
  }

  /** Which cgroup to freeze for pid: its v2 cgroup when it has cgroup.freeze, else its v1 freezer cgroup. */
  private targetOf(pid: number): Target {
    if (!Number.isInteger(pid) || pid <= 0) throw new FreezeError(`pid must be a positive integer, not ${pid}`);
    let text: string;
    try {
      text = readFileSync(`${this.procRoot}/${pid}/cgroup`, 'utf8');
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      throw new FreezeError(code === 'ENOENT' ? `process ${pid} does not exist` : `cannot read /proc/${pid}/cgroup: ${code}`);
    }
    const own = cgroupsOf(readFileSync(`${this.procRoot}/self/cgroup`, 'utf8'));
    const theirs = cgroupsOf(text);
    const reasons: string[] = [];
    const tries: [CgroupVersion, string | null, string | null, string | null][] = [
      [2, this.v2Root, theirs.v2, own.v2],
      [1, this.v1Root, theirs.freezer, own.freezer],
    ];
    for (const [version, root, cgroup, self] of tries) {
      if (root === null || cgroup === null) {
        reasons.push(`v${version}: ${root === null ? 'no hierarchy mounted' : 'process not in one'}`);
        continue;
      }
      const target = this.resolve(version, root, cgroup);
      if (typeof target === 'string') {
        reasons.push(`v${version}: ${target}`);
        continue;
      }
      if (self !== null && within(self, cgroup)) {
        throw new FreezeError(`refusing to freeze cgroup ${cgroup} of process ${pid}: the agent itself runs in it`);
      }
      if (version === 2 && theirs.freezer !== null) {
        const peer = this.resolve(1, this.v1Root, theirs.freezer);
        if (typeof peer !== 'string') target.v1Peer = peer;
      }
      return target;
    }
    throw new FreezeError(`cannot freeze the cgroup of process ${pid}: ${reasons.join('; ')}`);
  }

  /** The cgroup's directory, checked to be a directory of the cgroup mount reached without a link; else why not. */
  private resolve(version: CgroupVersion, root: string, cgroup: string): Target | string {
    const parts = components(cgroup);
    if (parts === null) return `cgroup ${JSON.stringify(cgroup)} is the root or not a plain path`;
    let type: number;
    try {
      type = statfsSync(root).type;
    } catch (err) {
      return `${root}: ${(err as NodeJS.ErrnoException).code}`;
    }
    if (type !== (version === 2 ? CGROUP2_SUPER_MAGIC : CGROUP_SUPER_MAGIC)) return `${root} is not a cgroup${version === 2 ? '2' : ''} mount`;
    const st = lstatUnder(root, parts.join('/'));
    if (st === null || !st.isDirectory()) return `${cgroup} is not a directory under ${root} (gone, or reached through a link)`;
    const control = version === 2 ? 'cgroup.freeze' : 'freezer.state';
    const file = lstatUnder(root, `${parts.join('/')}/${control}`);
    if (file === null || !file.isFile()) return `${cgroup} has no ${control}`;
    return { version, root, cgroup: `/${parts.join('/')}`, dir: path.join(root, ...parts) };
  }

  private recordFile(target: Target): string {
    const key = createHash('sha256').update(`${target.version}:${target.cgroup}`).digest('hex').slice(0, 32);
    return path.join(this.recordDir, `v${target.version}-${key}.json`);
  }

  private async freezeTarget(target: Target, pid: number): Promise<{ target: Target; alreadyFrozen: boolean; frozenMs: number }> {
    if (await this.isFrozenByOthers(target)) {
      this.log.info({ event: 'freezer-already-frozen', cgroup: target.cgroup }, 'cgroup was frozen already; left as it is');
      return { target, alreadyFrozen: true, frozenMs: 0 };
    }
    await ensureDir(path.join(this.dataDir, INCIDENTS_DIR), false);
    await ensureDir(this.recordDir, false);
    const record: FreezeRecord = { version: target.version, cgroup: target.cgroup, pid, agentPid: process.pid, frozenAt: new Date().toISOString() };
    // Durable before the freeze: a kill -9 from here on is undone by recover().
    await writeFileAtomic(this.recordFile(target), Buffer.from(`${JSON.stringify(record)}\n`));
    const started = performance.now();
    try {
      await writeControl(target, target.version === 2 ? 'cgroup.freeze' : 'freezer.state', target.version === 2 ? '1' : 'FROZEN');
      for (;;) {
        if (await this.isFrozen(target)) break;
        if (performance.now() - started > this.timeoutMs) {
          throw new FreezeError(`cgroup ${target.cgroup} did not freeze within ${this.timeoutMs} ms`);
        }
        await new Promise((resolve) => setTimeout(resolve, POLL_MS));
      }
    } catch (err) {
      await this.thawTarget(target).catch(() => {}); // logged there; the record stays for recover()
      throw err;
    }
    const frozenMs = performance.now() - started;
    this.log.info({ event: 'freezer-frozen', cgroup: target.cgroup, version: target.version, frozenMs }, 'cgroup frozen');
    return { target, alreadyFrozen: false, frozenMs };
  }

  private async thawTarget(target: Target): Promise<void> {
    try {
      await writeControl(target, target.version === 2 ? 'cgroup.freeze' : 'freezer.state', target.version === 2 ? '0' : 'THAWED');
    } catch (err) {
      // gone with its container: nothing left frozen; anything else: the record stays for recover()
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') {
        this.log.error({ event: 'freezer-thaw-failed', cgroup: target.cgroup, err: (err as Error).message }, 'cannot thaw a cgroup');
        throw err;
      }
    }
    await fsp.unlink(this.recordFile(target)).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== 'ENOENT') throw err;
    });
    this.log.info({ event: 'freezer-thawed', cgroup: target.cgroup }, 'cgroup thawed');
  }

  private async isFrozen(target: Target): Promise<boolean> {
    if (target.version === 2) return /^frozen 1$/m.test(await readControl(target, 'cgroup.events'));
    return (await readControl(target, 'freezer.state')).trim() === 'FROZEN';
  }

  /** Frozen by someone else: a v1-frozen task never reaches the v2 frozen state, so the v1 peer counts too. */
  private async isFrozenByOthers(target: Target): Promise<boolean> {
    if (target.version === 1) return (await readControl(target, 'freezer.state')).trim() !== 'THAWED';
    if ((await readControl(target, 'cgroup.freeze')).trim() === '1') return true;
    return target.v1Peer !== undefined && (await this.isFrozenByOthers(target.v1Peer));
  }
}

/** Opens a control file of the cgroup: no link followed (the directory was walked without one), never blocking. */
async function openControl(target: Target, name: string, flags: number): Promise<fsp.FileHandle> {
  const fh = await fsp.open(path.join(target.dir, name), flags | C.O_NOFOLLOW | C.O_NONBLOCK);
  if (!(await fh.stat()).isFile()) {
    await fh.close();
    throw new FreezeError(`${path.join(target.dir, name)} is not a regular file`);
  }
  return fh;
}

async function readControl(target: Target, name: string): Promise<string> {
  const fh = await openControl(target, name, C.O_RDONLY);
  try {
    const buf = Buffer.alloc(4096);
    const { bytesRead } = await fh.read(buf, 0, buf.length, 0);
    return buf.subarray(0, bytesRead).toString('utf8');
  } finally {
    await fh.close();
  }
}

async function writeControl(target: Target, name: string, value: string): Promise<void> {
  const fh = await openControl(target, name, C.O_WRONLY);
  try {
    await fh.write(value);
  } finally {
    await fh.close();
  }
}

/** Runs fn with pid's cgroup frozen; thaws when fn settles, whatever it did. */
export async function withFrozen<T>(freezer: CgroupFreezer, pid: number, fn: (frozen: FrozenCgroup) => Promise<T>): Promise<T> {
  const frozen = await freezer.freeze(pid);
  try {
    return await fn(frozen);
  } finally {
    await frozen.thaw();
  }
}
