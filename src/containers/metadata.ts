/**
 * Container metadata, cached per container ID: runtime, name, image, start
 * time, init pid, overlay root, and the Kubernetes pod. Learned once, when
 * the resolver first sees a container's cgroup (its onContainer callback),
 * in the background: lookups are asynchronous, bounded in time and size, and
 * never on the event path. Events keep only their container ID; whatever a
 * runtime does not answer stays "" and nothing else depends on it.
 *
 * Sources, per runtime (what this machine's podman 4.3 and containerd 1.6 keep):
 * - podman: c/storage's overlay-containers/containers.json (names, image
 *   name and ID) and the runtime's pidfile under the run root.
 * - containerd: the task's OCI bundle under <state>/io.containerd.runtime.v2.task/<ns>/<id>
 *   (init.pid, config.json annotations set by the CRI plugin), containerd's
 *   containers/images API for containers that are not the CRI's (ctr, nerdctl).
 * - CRI (containerd's CRI plugin, CRI-O): runtime.v1 ListContainers and
 *   PodSandboxStatus give the container's name and image and its pod's name,
 *   namespace, UID and labels (labels exist nowhere on disk).
 * - every runtime: the init process's /proc/<pid>/mountinfo (overlay root)
 *   and /proc/<pid>/stat (start time).
 */
import * as fs from 'fs';
import * as path from 'path';
import type { ContainerRuntime } from './cgroup-path';
import type { ContainerInfo } from './resolver';
import { CriClient, DEFAULT_CRI_SOCKETS, type PodMetadata } from './cri';
import { ContainerdClient } from './metadata-containerd';
import { readBoundedFile, readJsonIfExists, withTimeout } from './metadata-files';
import type { MetadataDir } from './metadata-dir';
import { parseOverlayRoot, type OverlayRoot } from './metadata-mountinfo';

export type { OverlayRoot } from './metadata-mountinfo';
export type { PodMetadata } from './cri';

export interface ContainerMetadata {
  containerId: string;
  runtime: ContainerRuntime;
  /** The runtime's name for it ("" unknown); for a plain containerd container its containerd ID. */
  name: string;
  /** Image reference as the container was created from it ("" unknown). */
  image: string;
  /** Image ID or digest as the runtime reports it ("" unknown). */
  imageId: string;
  /** When its init process started, ISO 8601 ("" unknown). */
  startedAt: string;
  /** Host pid of its init process (0 unknown). */
  initPid: number;
  overlay: OverlayRoot | null;
  pod: PodMetadata | null;
  /** When its cgroup went away, ISO 8601 ("" while it exists). */
  removedAt: string;
  /** What could not be learned and why; empty when every source answered. */
  errors: string[];
}

export interface MetadataOptions {
  /** The cgroup2 mount the resolver uses (for cgroup.procs when no pidfile is found). */
  cgroupRoot: string;
  procRoot?: string;
  podman?: { graphRoot: string; runRoot: string };
  /** containerd's socket and state dir (its `state`, /run/containerd). */
  containerd?: { socket: string; stateDir: string };
  /** CRI sockets to ask, in order; those that do not exist are skipped. */
  criSockets?: string[];
  /** Deadline of each runtime call. */
  callTimeoutMs?: number;
  /** How long to wait for a new container's init process to appear. */
  pidWaitMs?: number;
  /** Containers remembered (running or gone), least recently learned dropped first. */
  maxEntries?: number;
  /** Lookups running at once; more wait in a queue of at most maxEntries. */
  maxConcurrent?: number;
  log?: (obj: object, msg: string) => void;
  /** Where each container's metadata is written once learned and again when it goes (the data dir's containers/). */
  dir?: MetadataDir;
}

export const DEFAULT_METADATA = {
  procRoot: '/proc',
  podman: { graphRoot: '/var/lib/containers/storage', runRoot: '/run/containers/storage' },
  containerd: { socket: '/run/containerd/containerd.sock', stateDir: '/run/containerd' },
  callTimeoutMs: 2000,
  pidWaitMs: 5000,
  maxEntries: 4096,
  maxConcurrent: 4,
} as const;

const MAX_STATE_JSON = 16 << 20; // containers.json lists every container of the host
const MAX_CONFIG_JSON = 4 << 20;
const MAX_SMALL = 4096;
const MAX_MOUNTINFO = 4 << 20;
const MAX_NAMESPACES = 64;
const PODMAN_LIST_TTL_MS = 2000;
const PID_POLL_MS = 50;
// USER_HZ: 100 on every Linux architecture Amber runs on
const CLOCK_TICKS_PER_SECOND = 100;

const CRI_ANNOTATIONS = {
  sandboxId: 'io.kubernetes.cri.sandbox-id',
  sandboxName: 'io.kubernetes.cri.sandbox-name',
  sandboxNamespace: 'io.kubernetes.cri.sandbox-namespace',
  sandboxUid: 'io.kubernetes.cri.sandbox-uid',
  containerName: 'io.kubernetes.cri.container-name',
  imageName: 'io.kubernetes.cri.image-name',
} as const;

function message(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function str(v: unknown): string {
  return typeof v === 'string' ? v : '';
}

function stringMap(v: unknown): Record<string, string> {
  const out: Record<string, string> = {};
  if (isRecord(v)) for (const [k, val] of Object.entries(v)) if (typeof val === 'string') out[k] = val;
  return out;
}

/** The CRI's runtime_name as Amber names runtimes. */
function runtimeOf(runtimeName: string): ContainerRuntime {
  if (runtimeName === 'containerd') return 'containerd';
  if (runtimeName === 'cri-o') return 'cri-o';
  if (runtimeName === 'docker' || runtimeName === 'cri-dockerd') return 'docker';
  return 'unknown';
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms).unref());

/**
 * The start time of a process as epoch ms, from /proc/<pid>/stat (ticks since
 * boot) and /proc/uptime read at nowMs (seconds since boot, to 10 ms; /proc/stat's
 * btime is whole seconds, too coarse). Both count CLOCK_BOOTTIME.
 */
export function processStartMs(statText: string, uptimeText: string, nowMs: number): number {
  // comm (field 2) may hold spaces and ')': fields after it start at the last ')'
  const close = statText.lastIndexOf(')');
  if (close < 0) throw new Error('no comm field in /proc/<pid>/stat');
  const fields = statText.slice(close + 2).split(' ');
  const startTicks = Number(fields[19]); // field 22 overall
  const uptime = Number(uptimeText.split(' ')[0]);
  if (!Number.isSafeInteger(startTicks) || !Number.isFinite(uptime) || uptimeText.trim() === '') {
    throw new Error('no start time in /proc/<pid>/stat or uptime in /proc/uptime');
  }
  return Math.round(nowMs - uptime * 1000 + (startTicks * 1000) / CLOCK_TICKS_PER_SECOND);
}

export class ContainerMetadataStore {
  private readonly procRoot: string;
  private readonly cgroupRoot: string;
  private readonly podman: { graphRoot: string; runRoot: string };
  private readonly containerd: { socket: string; stateDir: string };
  private readonly criSockets: string[];
  private readonly callTimeoutMs: number;
  private readonly pidWaitMs: number;
  private readonly maxEntries: number;
  private readonly maxConcurrent: number;
  private readonly log: (obj: object, msg: string) => void;
  private readonly dir: MetadataDir | undefined;
  /** Writes in order, so a container's last state is its file's. */
  private writing: Promise<void> = Promise.resolve();

  private readonly entries = new Map<string, ContainerMetadata>();
  private readonly pending = new Map<string, Promise<ContainerMetadata>>();
  private readonly queue: Array<() => void> = [];
  private running = 0;
  private dropped = 0;
  private closed = false;
  private readonly criClients = new Map<string, CriClient>();
  private podmanList: { list: unknown[]; readAt: number } | undefined;
  private containerdClient: ContainerdClient | undefined;

  constructor(options: MetadataOptions) {
    this.cgroupRoot = options.cgroupRoot;
    this.procRoot = options.procRoot ?? DEFAULT_METADATA.procRoot;
    this.podman = options.podman ?? DEFAULT_METADATA.podman;
    this.containerd = options.containerd ?? DEFAULT_METADATA.containerd;
    this.criSockets = options.criSockets ?? DEFAULT_CRI_SOCKETS;
    this.callTimeoutMs = options.callTimeoutMs ?? DEFAULT_METADATA.callTimeoutMs;
    this.pidWaitMs = options.pidWaitMs ?? DEFAULT_METADATA.pidWaitMs;
    this.maxEntries = Math.max(1, options.maxEntries ?? DEFAULT_METADATA.maxEntries);
    this.maxConcurrent = Math.max(1, options.maxConcurrent ?? DEFAULT_METADATA.maxConcurrent);
    this.log = options.log ?? (() => {});
    this.dir = options.dir;
  }

  /** The resolver's onContainer: learn a container once, in the background. */
  onContainer(info: ContainerInfo): void {
    if (this.closed || this.entries.has(info.containerId) || this.pending.has(info.containerId)) return;
    if (this.pending.size >= this.maxEntries) {
      this.dropped++;
      return;
    }
    const learning = this.schedule(() => this.learn(info)).then(
      (md) => {
        this.pending.delete(info.containerId);
        this.store(md);
        this.persist(md);
        return md;
      },
      (err: unknown) => {
        this.pending.delete(info.containerId);
        throw err;
      },
    );
    learning.catch((err: unknown) => this.log({ err, containerId: info.containerId }, 'container metadata: lookup failed'));
    this.pending.set(info.containerId, learning);
  }

  /** The resolver's onContainerGone: the container's cgroup was removed; its metadata stays (bounded). */
  onContainerGone(containerId: string): void {
    const md = this.entries.get(containerId);
    if (md !== undefined && md.removedAt === '') {
      md.removedAt = new Date().toISOString();
      this.persist(md);
    }
  }

  /** Resolves when every file write queued so far is done. */
  flush(): Promise<void> {
    return this.writing;
  }

  /** What is known now (undefined while it is being learned or never was). */
  get(containerId: string): ContainerMetadata | undefined {
    return this.entries.get(containerId);
  }

  /** Every container known now (running or recently gone). */
  all(): ContainerMetadata[] {
    return [...this.entries.values()];
  }

  /** Resolves when every lookup in progress now is done (each is bounded by the call timeout). */
  async idle(): Promise<void> {
    await Promise.allSettled([...this.pending.values()]);
  }

  /** Waits for a lookup in progress. */
  async lookup(containerId: string): Promise<ContainerMetadata | undefined> {
    const pending = this.pending.get(containerId);
    if (pending) await pending.catch(() => {});
    return this.entries.get(containerId);
  }

  stats(): { entries: number; pending: number; dropped: number } {
    return { entries: this.entries.size, pending: this.pending.size, dropped: this.dropped };
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const c of this.criClients.values()) c.close();
    this.containerdClient?.close();
  }

  private persist(md: ContainerMetadata): void {
    const dir = this.dir;
    if (dir === undefined) return;
    this.writing = this.writing
      .then(() => dir.write(md))
      .catch((err: unknown) => this.log({ err, containerId: md.containerId }, 'container metadata: cannot write its file'));
  }

  private store(md: ContainerMetadata): void {
    this.entries.delete(md.containerId);
    this.entries.set(md.containerId, md);
    while (this.entries.size > this.maxEntries) this.entries.delete(this.entries.keys().next().value as string);
  }

  private schedule<T>(task: () => Promise<T>): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const start = () => {
        this.running++;
        task()
          .then(resolve, reject)
          .finally(() => {
            this.running--;
            this.queue.shift()?.();
          });
      };
      if (this.running < this.maxConcurrent) start();
      else this.queue.push(start);
    });
  }

  private async learn(info: ContainerInfo): Promise<ContainerMetadata> {
    const md: ContainerMetadata = {
      containerId: info.containerId,
      runtime: info.runtime,
      name: '',
      image: '',
      imageId: '',
      startedAt: '',
      initPid: 0,
      overlay: null,
      pod: null,
      removedAt: '',
      errors: [],
    };
    const step = async (what: string, fn: () => Promise<void>): Promise<void> => {
      try {
        await fn();
      } catch (err) {
        md.errors.push(`${what}: ${message(err)}`);
      }
    };

    let pidFile = '';
    let annotations: Record<string, string> = {};
    let containerdNamespace = '';
    if (info.runtime === 'podman') {
      await step('podman state', () => this.readPodmanState(md));
      pidFile = path.join(this.podman.runRoot, 'overlay-containers', md.containerId, 'userdata/pidfile');
    } else if (info.runtime === 'containerd' || info.runtime === 'unknown') {
      await step('containerd bundle', async () => {
        const bundle = await this.findContainerdBundle(md.containerId);
        if (bundle === null) return;
        containerdNamespace = bundle.namespace;
        if (info.runtime === 'unknown') md.runtime = 'containerd';
        pidFile = path.join(bundle.dir, 'init.pid');
        const config = await readJsonIfExists(path.join(bundle.dir, 'config.json'), MAX_CONFIG_JSON);
        annotations = stringMap(isRecord(config) ? config.annotations : undefined);
      });
    }

    await step('init pid', async () => {
      md.initPid = await this.waitForInitPid(pidFile, info.cgroupPath);
    });
    if (md.initPid > 0) {
      const proc = path.join(this.procRoot, String(md.initPid));
      await step('mountinfo', async () => {
        md.overlay = parseOverlayRoot(await readBoundedFile(path.join(proc, 'mountinfo'), MAX_MOUNTINFO));
      });
      await step('start time', async () => {
        const stat = await readBoundedFile(path.join(proc, 'stat'), MAX_SMALL);
        const uptime = await readBoundedFile(path.join(this.procRoot, 'uptime'), MAX_SMALL);
        md.startedAt = new Date(processStartMs(stat, uptime, Date.now())).toISOString();
      });
    }

    // the CRI plugin's annotations, as a fallback to the CRI's own answer
    if (annotations[CRI_ANNOTATIONS.sandboxName] !== undefined) {
      md.name = annotations[CRI_ANNOTATIONS.containerName] ?? '';
      md.image = annotations[CRI_ANNOTATIONS.imageName] ?? '';
      md.pod = {
        name: annotations[CRI_ANNOTATIONS.sandboxName],
        namespace: annotations[CRI_ANNOTATIONS.sandboxNamespace] ?? '',
        uid: annotations[CRI_ANNOTATIONS.sandboxUid] ?? info.podUid,
        labels: {},
      };
    }
    const isCri =
      md.runtime === 'cri-o' ||
      info.runtime === 'unknown' ||
      info.podUid !== '' ||
      containerdNamespace === 'k8s.io' ||
      annotations[CRI_ANNOTATIONS.sandboxId] !== undefined;
    if (isCri) {
      await step('cri', () => this.askCri(md));
    } else if (md.runtime === 'containerd' && containerdNamespace !== '') {
      await step('containerd api', async () => {
        const c = await withTimeout(
          this.containerdApi().container(containerdNamespace, md.containerId),
          this.callTimeoutMs * 2,
          'containerd',
        );
        if (c === null) return;
        md.name = c.labels['nerdctl/name'] ?? md.containerId;
        md.image = c.image;
        md.imageId = c.imageId;
      });
    }
    return md;
  }

  /**
   * containers.json lists every container of the host: at start-up, when all
   * running containers are learned at once, one parse serves them all; a
   * container not in the cached list (a new one) makes a fresh read.
   */
  private async readPodmanState(md: ContainerMetadata): Promise<void> {
    const find = (list: unknown[]): unknown => list.find((c) => isRecord(c) && c.id === md.containerId);
    let entry: unknown;
    const cached = this.podmanList;
    if (cached !== undefined && performance.now() - cached.readAt < PODMAN_LIST_TTL_MS) entry = find(cached.list);
    if (entry === undefined) {
      const readAt = performance.now();
      const list = await readJsonIfExists(path.join(this.podman.graphRoot, 'overlay-containers/containers.json'), MAX_STATE_JSON);
      if (!Array.isArray(list)) return;
      this.podmanList = { list, readAt };
      entry = find(list);
    }
    if (!isRecord(entry)) return;
    const names = Array.isArray(entry.names) ? entry.names : [];
    md.name = str(names[0]);
    md.imageId = str(entry.image);
    // c/storage keeps libpod's own facts as a JSON string
    let meta: unknown;
    try {
      meta = typeof entry.metadata === 'string' ? JSON.parse(entry.metadata) : undefined;
    } catch {
      meta = undefined;
    }
    if (isRecord(meta)) {
      md.image = str(meta['image-name']);
      if (md.name === '') md.name = str(meta.name);
      if (md.imageId === '') md.imageId = str(meta['image-id']);
    }
  }

  /** The task's bundle dir in whichever containerd namespace holds it. */
  private async findContainerdBundle(id: string): Promise<{ namespace: string; dir: string } | null> {
    const tasks = path.join(this.containerd.stateDir, 'io.containerd.runtime.v2.task');
    let namespaces: string[];
    try {
      namespaces = (await fs.promises.readdir(tasks, { withFileTypes: true }))
        .filter((d) => d.isDirectory())
        .map((d) => d.name)
        .slice(0, MAX_NAMESPACES);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw err;
    }
    for (const namespace of namespaces) {
      const dir = path.join(tasks, namespace, id);
      try {
        if ((await fs.promises.lstat(dir)).isDirectory()) return { namespace, dir };
      } catch {
        // not in this namespace
      }
    }
    return null;
  }

  /**
   * The runtime's pidfile; else (no pidfile known, or none written after half
   * the wait) the first process in the container's cgroup that is no longer
   * the runtime's own (runc's "runc:[1:CHILD]" passes through the cgroup
   * before the container's init). The cgroup appears before the runtime
   * starts the process: poll a while.
   */
  private async waitForInitPid(pidFile: string, cgroupPath: string): Promise<number> {
    const start = performance.now();
    const procs = path.join(this.cgroupRoot, cgroupPath, 'cgroup.procs');
    for (;;) {
      const waited = performance.now() - start;
      if (pidFile !== '') {
        try {
          const pid = Number((await readBoundedFile(pidFile, MAX_SMALL)).trim());
          if (Number.isSafeInteger(pid) && pid > 0) return pid;
        } catch {
          // not written yet
        }
      }
      if (pidFile === '' || waited >= this.pidWaitMs / 2) {
        const pid = await this.firstContainerProcess(procs);
        if (pid > 0) return pid;
      }
      if (this.closed || waited >= this.pidWaitMs) throw new Error(`no process found within ${this.pidWaitMs} ms`);
      await sleep(PID_POLL_MS);
    }
  }

  private async firstContainerProcess(procsFile: string): Promise<number> {
    let pids: number[];
    try {
      pids = (await readBoundedFile(procsFile, 1 << 20)).split('\n').filter((l) => l !== '').map(Number);
    } catch {
      return 0; // the cgroup is gone, or not populated yet
    }
    for (const pid of pids) {
      if (!Number.isSafeInteger(pid) || pid <= 0) continue;
      try {
        const comm = await readBoundedFile(path.join(this.procRoot, String(pid), 'comm'), MAX_SMALL);
        if (!comm.startsWith('runc:')) return pid;
      } catch {
        // exited meanwhile
      }
    }
    return 0;
  }

  /**
   * The CRI's view of the container and its pod. A sandbox's own container
   * starts before containerd's CRI lists the sandbox: one no runtime knows yet
   * is asked again for up to pidWaitMs.
   */
  private async askCri(md: ContainerMetadata): Promise<void> {
    const deadline = performance.now() + this.pidWaitMs;
    for (;;) {
      const errors: string[] = [];
      for (const client of await this.criClientsNow()) {
        try {
          const c = await withTimeout(client.container(md.containerId), this.callTimeoutMs * 3, `CRI ${client.socket}`);
          if (c === null) continue;
          if (c.name !== '') md.name = c.name;
          if (c.image !== '') md.image = c.image;
          if (c.imageId !== '') md.imageId = c.imageId;
          if (c.pod !== null) md.pod = c.pod;
          // kubelet's cgroupfs layout does not say which runtime made the container: the CRI does
          if (md.runtime === 'unknown') md.runtime = runtimeOf((await client.version()).runtimeName);
          return;
        } catch (err) {
          errors.push(`${client.socket}: ${message(err)}`);
        }
      }
      // a runtime that fails (or hangs) is not asked again: its deadline was the budget
      if (errors.length > 0) throw new Error(errors.join('; '));
      if (this.closed || performance.now() >= deadline) throw new Error('no CRI runtime knows this container');
      await sleep(PID_POLL_MS * 2);
    }
  }

  /** Clients of the CRI sockets that exist now (a runtime started after the agent is found at its first container). */
  private async criClientsNow(): Promise<CriClient[]> {
    const clients: CriClient[] = [];
    for (const socket of this.criSockets) {
      let client = this.criClients.get(socket);
      if (client === undefined) {
        try {
          if (!(await fs.promises.stat(socket)).isSocket() || this.closed) continue;
        } catch {
          continue; // no such runtime here
        }
        client = new CriClient(socket, this.callTimeoutMs);
        this.criClients.set(socket, client);
      }
      clients.push(client);
    }
    return clients;
  }

  private containerdApi(): ContainerdClient {
    this.containerdClient ??= new ContainerdClient(this.containerd.socket, this.callTimeoutMs);
    return this.containerdClient;
  }
}
