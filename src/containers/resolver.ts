/**
 * cgroup v2 id -> container ID, for every event (hot path).
 *
 * The id of a cgroup is the inode number of its directory under the cgroup2
 * mount. The resolver learns id -> path from one walk of the tree at start
 * (containers already running) and then from the kernel's mkdir/rmdir
 * records (containers started later, even short-lived ones whose directory
 * is gone before anyone looks). The container ID of each id is parsed once,
 * when the id is learned.
 */

import * as fs from 'fs';
import * as path from 'path';
import { matchCgroupPath, parseProcCgroup, type CgroupPathMatch, type ContainerRuntime } from './cgroup-path';

export interface ContainerInfo {
  containerId: string;
  runtime: ContainerRuntime;
  podUid: string;
  /** The container's own cgroup (v2 path relative to the cgroup2 root, or the v1 path it was found by). */
  cgroupPath: string;
}

export interface ResolverStats {
  entries: number;
  hits: number;
  misses: number;
  rescans: number;
}

export interface ContainerResolverOptions {
  /** The cgroup2 mount: /sys/fs/cgroup/unified on hybrid hosts, /sys/fs/cgroup on pure v2 hosts. */
  cgroupRoot: string;
  /** The host's /proc (pids in events are in the host pid namespace). */
  procRoot?: string;
  /** Bound of each cache (cgroup ids, mount namespaces, container infos). */
  maxEntries?: number;
  log?: (obj: object, msg: string) => void;
  /** Monotonic milliseconds; tests replace it to move time. */
  now?: () => number;
  /** Called once when a container is first seen (container metadata learns it then). Must not throw or block. */
  onContainer?: (info: ContainerInfo) => void;
  /** Called when a container's own cgroup is removed. */
  onContainerGone?: (containerId: string) => void;
}

/** Removed cgroups stay known this long: their events may still be in flight. */
export const REMOVED_GRACE_MS = 60_000;
/** Rescans of the tree after a miss, at most once per this interval. */
export const RESCAN_INTERVAL_MS = 1_000;
/** A mount namespace found to be no container is asked again after this (a process may be about to join its container's cgroup). */
const MNTNS_NEGATIVE_TTL_MS = 1_000;
/** A mount namespace's container is checked again after this (namespace inode numbers are reused). */
const MNTNS_POSITIVE_TTL_MS = 60_000;
/** Ids kept for a rescan to mark unresolvable; misses beyond this still trigger the rescan. */
const MAX_PENDING_MISSES = 4096;

interface CgroupEntry {
  /** "" when the id was not found anywhere (gone before we looked). */
  path: string;
  /** "" when the path is not a container's. */
  containerId: string;
  learnedAt: number;
  /** 0 while the cgroup exists. */
  removedAt: number;
  /** The mount namespace learned from this container's events last (0: none); see learnMntns. */
  mntns: number;
}

interface MntnsEntry {
  containerId: string;
  expiresAt: number;
  /** Learned from the container's own events (see learnMntns), not from /proc. */
  learned: boolean;
}

interface WalkResult {
  pathsById: Map<number, string>;
  /** false when part of the tree could not be read (other than directories vanishing). */
  complete: boolean;
}

function isVanished(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException | null)?.code;
  return code === 'ENOENT' || code === 'ENOTDIR';
}

/** Map as a LRU: insertion order is recency; re-inserting makes an entry the most recent. */
function setRecent<K, V>(map: Map<K, V>, key: K, value: V): void {
  map.delete(key);
  map.set(key, value);
}

export class ContainerResolver {
  private readonly cgroupRoot: string;
  private readonly procRoot: string;
  private readonly maxEntries: number;
  private readonly log: (obj: object, msg: string) => void;
  private readonly now: () => number;
  private readonly onContainer: (info: ContainerInfo) => void;
  private readonly onContainerGone: (containerId: string) => void;

  private readonly entries = new Map<number, CgroupEntry>();
  private readonly byMntns = new Map<number, MntnsEntry>();
  private readonly infos = new Map<string, ContainerInfo>();
  /** Removals in time order, to drop entries after their grace period. */
  private readonly removals: Array<{ id: number; removedAt: number }> = [];
  private removalsHead = 0;

  // Events come in runs from the same cgroup: the last hit skips the LRU touch.
  private lastCgroupId = -1;
  private lastEntry: CgroupEntry | undefined;

  private hostMntns = 0;
  private hits = 0;
  private misses = 0;
  private rescans = 0;

  private readonly pendingMisses = new Set<number>();
  private rescanTimer: NodeJS.Timeout | undefined;
  private walking: Promise<void> | undefined;
  private lastWalkAt = Number.NEGATIVE_INFINITY;
  private closed = false;

  constructor(options: ContainerResolverOptions) {
    this.cgroupRoot = path.resolve(options.cgroupRoot);
    this.procRoot = options.procRoot ?? '/proc';
    this.maxEntries = Math.max(1, options.maxEntries ?? 65536);
    this.log = options.log ?? (() => {});
    this.now = options.now ?? (() => performance.now());
    this.onContainer = options.onContainer ?? (() => {});
    this.onContainerGone = options.onContainerGone ?? (() => {});
  }

  /** Learns the host's mount namespace and every cgroup that exists now. Rejects when the root cannot be read. */
  async init(): Promise<void> {
    // init's, or kthreadd's (the initial namespace) where init is protected from us, as on some VMs
    this.hostMntns = 0;
    const errors: string[] = [];
    for (const pid of ['1', '2']) {
      try {
        this.hostMntns = fs.statSync(path.join(this.procRoot, pid, 'ns/mnt')).ino;
        break;
      } catch (err) {
        errors.push((err as Error).message);
      }
    }
    if (this.hostMntns === 0) {
      // Unknown: every mount namespace is then checked (once per TTL) by /proc/<pid>/cgroup.
      this.log({ errors }, 'container resolver: cannot read the host mount namespace');
    }
    await this.walkAndLearn([]);
  }

  /** A cgroup v2 directory made or removed, from the kernel. */
  onCgroup(id: number, cgroupPath: string, removed: boolean): void {
    const now = this.now();
    const normalized = cgroupPath.startsWith('/') ? cgroupPath : '/' + cgroupPath;
    const known = this.entries.get(id);
    if (removed) {
      // Keep the mapping: events of its last processes may still be queued.
      const entry = known !== undefined && known.path === normalized ? known : this.newEntry(normalized, now);
      entry.removedAt = now;
      this.store(id, entry);
      this.removals.push({ id, removedAt: now });
      if (entry.containerId !== '' && this.infos.get(entry.containerId)?.cgroupPath === entry.path) {
        this.onContainerGone(entry.containerId);
      }
    } else {
      this.store(id, this.newEntry(normalized, now));
    }
    this.pendingMisses.delete(id);
    this.pruneRemoved(now);
  }

  /** The container of an event, "" for host processes. O(1) on a known cgroup id. */
  containerId(cgroupId: number, pid: number, mntns: number): string {
    let entry = cgroupId === this.lastCgroupId ? this.lastEntry : this.entries.get(cgroupId);
    if (entry !== undefined && entry.removedAt !== 0 && this.now() - entry.removedAt > REMOVED_GRACE_MS) {
      this.pruneRemoved(this.now());
      entry = this.entries.get(cgroupId);
    }
    if (entry !== undefined) {
      this.hits++;
      if (cgroupId !== this.lastCgroupId) {
        setRecent(this.entries, cgroupId, entry);
        this.lastCgroupId = cgroupId;
        this.lastEntry = entry;
      }
      if (entry.containerId !== '') {
        if (mntns !== entry.mntns) this.learnMntns(entry, mntns);
        return entry.containerId;
      }
      return this.containerIdByMntns(pid, mntns);
    }
    // Unknown id: its mkdir came before we listened, or was lost. Answer
    // what /proc can tell now and look for the id in the background.
    this.misses++;
    this.scheduleRescan(cgroupId);
    return this.containerIdByMntns(pid, mntns);
  }

  info(containerId: string): ContainerInfo | undefined {
    return this.infos.get(containerId);
  }

  stats(): ResolverStats {
    return { entries: this.entries.size, hits: this.hits, misses: this.misses, rescans: this.rescans };
  }

  /** Resolves when no rescan is scheduled or running. */
  async idle(): Promise<void> {
    while (this.walking !== undefined || this.rescanTimer !== undefined) {
      if (this.walking) await this.walking.catch(() => {});
      else await new Promise((resolve) => setTimeout(resolve, 10));
    }
  }

  close(): void {
    this.closed = true;
    if (this.rescanTimer) clearTimeout(this.rescanTimer);
    this.rescanTimer = undefined;
  }

  private newEntry(cgroupPath: string, now: number): CgroupEntry {
    const match = cgroupPath === '' ? null : matchCgroupPath(cgroupPath);
    if (match) this.rememberInfo(match);
    return { path: cgroupPath, containerId: match ? match.containerId : '', learnedAt: now, removedAt: 0, mntns: 0 };
  }

  private rememberInfo(match: CgroupPathMatch): void {
    const { containerId, runtime, podUid, cgroupPath } = match;
    const isNew = this.infos.get(containerId)?.cgroupPath !== cgroupPath;
    const info = { containerId, runtime, podUid, cgroupPath };
    setRecent(this.infos, containerId, info);
    this.evictOldest(this.infos);
    if (isNew) this.onContainer(info);
  }

  private store(id: number, entry: CgroupEntry): void {
    setRecent(this.entries, id, entry);
    if (id === this.lastCgroupId) this.lastEntry = entry;
    while (this.entries.size > this.maxEntries) {
      const oldest = this.entries.keys().next().value as number;
      this.entries.delete(oldest);
      if (oldest === this.lastCgroupId) this.forgetLastHit();
    }
  }

  private forgetLastHit(): void {
    this.lastCgroupId = -1;
    this.lastEntry = undefined;
  }

  private evictOldest<K, V>(map: Map<K, V>): void {
    while (map.size > this.maxEntries) map.delete(map.keys().next().value as K);
  }

  /** Drops removed cgroups whose grace period is over. Amortized O(1). */
  private pruneRemoved(now: number): void {
    while (this.removalsHead < this.removals.length) {
      const { id, removedAt } = this.removals[this.removalsHead];
      if (now - removedAt <= REMOVED_GRACE_MS) break;
      this.removalsHead++;
      const entry = this.entries.get(id);
      // The id may have been learned again since (re-made, or re-removed later).
      if (entry !== undefined && entry.removedAt === removedAt) {
        this.entries.delete(id);
        const byNs = entry.mntns === 0 ? undefined : this.byMntns.get(entry.mntns);
        if (byNs !== undefined && byNs.learned && byNs.containerId === entry.containerId) this.byMntns.delete(entry.mntns);
        if (id === this.lastCgroupId) this.forgetLastHit();
        const info = entry.containerId === '' ? undefined : this.infos.get(entry.containerId);
        if (info !== undefined && info.cgroupPath === entry.path) this.infos.delete(entry.containerId);
      }
    }
    if (this.removalsHead > 1024 && this.removalsHead * 2 > this.removals.length) {
      this.removals.splice(0, this.removalsHead);
      this.removalsHead = 0;
    }
  }

  /**
   * A container's event names its mount namespace: processes that enter that
   * namespace before they join the container's cgroup (runc's setup for
   * `podman exec`/`kubectl exec`: its fork, open and exit) are named by it
   * until the container's cgroup is gone. Never the host's namespace (a
   * container sharing it names nothing), and not at all when the host's is
   * unknown.
   */
  private learnMntns(entry: CgroupEntry, mntns: number): void {
    if (mntns === 0 || this.hostMntns === 0 || mntns === this.hostMntns) return;
    entry.mntns = mntns;
    setRecent(this.byMntns, mntns, { containerId: entry.containerId, expiresAt: Infinity, learned: true });
    this.evictOldest(this.byMntns);
  }

  /**
   * For runtimes that leave containers in a cgroup v2 directory that names no
   * container (hybrid hosts with v1-only runtimes): a process outside the
   * host's mount namespace is looked up in /proc/<pid>/cgroup, once per mount
   * namespace and TTL; the answer, empty or not, is cached by namespace.
   */
  private containerIdByMntns(pid: number, mntns: number): string {
    if (mntns === 0 || mntns === this.hostMntns || pid <= 0) return '';
    const cached = this.byMntns.get(mntns);
    const now = this.now();
    if (cached !== undefined && now < cached.expiresAt) return cached.containerId;

    let text: string;
    try {
      text = fs.readFileSync(`${this.procRoot}/${pid}/cgroup`, 'utf8');
    } catch {
      // The process is gone: keep what we knew, ask again later.
      const containerId = cached?.containerId ?? '';
      setRecent(this.byMntns, mntns, { containerId, expiresAt: now + MNTNS_NEGATIVE_TTL_MS, learned: false });
      this.evictOldest(this.byMntns);
      return containerId;
    }
    const match = parseProcCgroup(text);
    if (match) this.rememberInfo(match);
    const containerId = match ? match.containerId : '';
    const ttl = match ? MNTNS_POSITIVE_TTL_MS : MNTNS_NEGATIVE_TTL_MS;
    setRecent(this.byMntns, mntns, { containerId, expiresAt: now + ttl, learned: false });
    this.evictOldest(this.byMntns);
    return containerId;
  }

  private scheduleRescan(cgroupId: number): void {
    if (this.pendingMisses.size < MAX_PENDING_MISSES) this.pendingMisses.add(cgroupId);
    this.armRescan();
  }

  private armRescan(): void {
    // A walk in progress may have passed the id's directory already: the
    // next one is armed when it ends, for the misses left pending.
    if (this.closed || this.rescanTimer !== undefined || this.walking !== undefined) return;
    if (this.pendingMisses.size === 0) return;
    const delay = Math.max(0, this.lastWalkAt + RESCAN_INTERVAL_MS - this.now());
    this.rescanTimer = setTimeout(() => {
      this.rescanTimer = undefined;
      if (this.closed) return;
      this.rescans++;
      const missed = [...this.pendingMisses];
      this.pendingMisses.clear();
      this.walkAndLearn(missed).catch((err: unknown) => {
        this.log({ err, cgroupRoot: this.cgroupRoot }, 'container resolver: rescan of the cgroup tree failed');
      });
    }, delay);
    this.rescanTimer.unref();
  }

  /**
   * Walks the tree and learns the ids not known yet (the kernel's records,
   * which may have come in meanwhile, are newer than what the walk saw).
   * Missed ids the walk did not find are gone: they are remembered as such
   * so they do not trigger rescans again. Known cgroups the walk did not find
   * lost their rmdir record: their grace period starts now.
   */
  private walkAndLearn(missed: number[]): Promise<void> {
    const run = async (): Promise<void> => {
      const startedAt = this.now();
      this.lastWalkAt = startedAt;
      const result = await this.walk();
      const now = this.now();
      for (const [id, cgroupPath] of result.pathsById) {
        if (!this.entries.has(id)) this.store(id, this.newEntry(cgroupPath, now));
      }
      for (const id of missed) {
        if (this.entries.has(id)) continue;
        const gone = this.newEntry('', now);
        gone.removedAt = now;
        this.store(id, gone);
        this.removals.push({ id, removedAt: now });
      }
      if (result.complete) {
        for (const [id, entry] of this.entries) {
          if (entry.removedAt === 0 && entry.learnedAt < startedAt && !result.pathsById.has(id)) {
            entry.removedAt = now;
            this.removals.push({ id, removedAt: now });
          }
        }
      }
      this.pruneRemoved(now);
    };
    const walking = run().finally(() => {
      this.walking = undefined;
      this.armRescan();
    });
    this.walking = walking;
    return walking;
  }

  /**
   * Every directory under the root by inode, never following symlinks.
   * Directories may vanish while we walk: that is no error.
   */
  private async walk(): Promise<WalkResult> {
    const pathsById = new Map<number, string>();
    let complete = true;
    const rootStat = await fs.promises.lstat(this.cgroupRoot);
    if (!rootStat.isDirectory()) throw new Error(`${this.cgroupRoot} is not a directory`);
    pathsById.set(rootStat.ino, '/');

    const pending = ['/'];
    while (pending.length > 0) {
      const relative = pending.pop() as string;
      const prefix = relative === '/' ? '' : relative;
      let names: string[];
      try {
        // d_type lets us skip the many control files without a syscall each;
        // symlinks are not directories here.
        const dirents = await fs.promises.readdir(this.cgroupRoot + prefix, { withFileTypes: true });
        names = dirents.filter((d) => d.isDirectory()).map((d) => d.name);
      } catch (err) {
        if (!isVanished(err)) {
          complete = false;
          this.log({ err, path: relative }, 'container resolver: cannot read a cgroup directory');
        }
        continue;
      }
      const children = await Promise.all(
        names.map(async (name) => {
          const childPath = `${prefix}/${name}`;
          try {
            return { childPath, stat: await fs.promises.lstat(this.cgroupRoot + childPath) };
          } catch (err) {
            if (!isVanished(err)) complete = false;
            return undefined;
          }
        }),
      );
      for (const child of children) {
        // Re-checked: the name may have been replaced by a symlink since readdir.
        if (child === undefined || !child.stat.isDirectory()) continue;
        // An inode seen twice (a bind mount loop) is walked once.
        if (pathsById.has(child.stat.ino)) continue;
        pathsById.set(child.stat.ino, child.childPath);
        pending.push(child.childPath);
      }
    }
    return { pathsById, complete };
  }
}
