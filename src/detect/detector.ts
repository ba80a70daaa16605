/**
 * The detector: a pipeline subscriber that keeps the process table, finds
 * drift (a container process executing a file that is not from its image),
 * runs the rules on every event and publishes its findings (`drift`,
 * `alert`) back into the pipeline, so they reach the buffer, the live streams
 * and the API like any event.
 *
 * Per event it does table upkeep and the compiled rules, nothing else. The
 * rare drift candidate has its file pinned at once (an fd: the process and
 * even its container may be gone a millisecond later) and is finished off
 * the event path: metadata, the image's copy, the hash (bounded queue).
 */
import { closeSync, readFileSync, readlinkSync } from 'node:fs';
import type { ContainerMetadata, OverlayRoot } from '../containers/metadata';
import { DEFAULTS } from '../defaults';
import { parseMountinfoLine, parseOverlayRoot, type MountinfoEntry } from '../containers/metadata-mountinfo';
import type { Pipeline, Subscription } from '../pipeline/pipeline';
import type {
  Action,
  AlertEvent,
  AmberEvent,
  CommonFields,
  DriftEvent,
  EventType,
  ExecEvent,
  FindingContainer,
} from '../sensor/events';
import { DEFAULT_HASH, EXITED, facts, HashQueue, type HashQueueOptions, type HashResult, imageCopy, openExe, openUnder, type Pinned } from './files';
import { DEFAULT_MAX_PROCESSES, ProcessTable } from './process-table';
import type { RuleContext, RuleSet } from './rules';

type Finding = DriftEvent | AlertEvent;

export interface MetadataSource {
  get(containerId: string): ContainerMetadata | undefined;
  lookup(containerId: string): Promise<ContainerMetadata | undefined>;
}

export interface DetectorOptions {
  pipeline: Pipeline;
  /** Container metadata (the agent's ContainerMetadataStore); without it findings have no container facts. */
  metadata?: MetadataSource;
  rules: RuleSet;
  log?: (obj: Record<string, unknown>, msg: string) => void;
  procRoot?: string;
  hash?: Partial<HashQueueOptions>;
  /** Also drift: executables on writable mounts other than the image (emptyDir, hostPath, tmpfs) written after the start. */
  writableMounts?: boolean;
  /** The pipeline queue of the detector (events). */
  maxQueued?: number;
  maxProcesses?: number;
  /** How long a finding waits for its container's metadata. */
  metadataWaitMs?: number;
  /**
   * `alert` findings per rule per second at most; more are counted (stats().alertsThrottled), not
   * published: a rule that matches a workload's normal traffic must not double the event rate.
   * Drift findings and incident decisions are never throttled.
   */
  maxAlertsPerRulePerSecond?: number;
}

export interface DetectorStats {
  drift: number;
  alerts: number;
  /** Findings published with their hash. */
  hashed: number;
  /** Drift whose process was gone before its file could be opened (hashed from the upper layer or not at all). */
  exitedBeforeHashing: number;
  /** Files not hashed because the queue was full. */
  hashRefused: number;
  /** Script execs in containers whose overlay root could not be found (not checked). */
  scriptsUnchecked: number;
  /** Execs from writable mounts whose process was gone before its file could be checked (writableMounts). */
  mountsUnchecked: number;
  processes: number;
  /** Findings being finished (metadata, hash). */
  pending: number;
  /** Alerts not published: over maxAlertsPerRulePerSecond. */
  alertsThrottled: number;
}

export interface DetectorHandle {
  /** Runs one batch through the detector synchronously (what the subscription does; the bench calls it directly). */
  process(events: AmberEvent[]): void;
  /** Called with every finding as it is published (incident capture listens here or on the pipeline). */
  onFinding(listener: (finding: Finding) => void): () => void;
  stats(): DetectorStats;
  /** Resolves when the findings under way are published. */
  settled(): Promise<void>;
  close(): void;
}


export function startDetector(options: DetectorOptions): DetectorHandle {
  const d = new Detector(options);
  const sub = options.pipeline.subscribe('detector', d.process, { maxQueued: options.maxQueued ?? DEFAULTS.detect.maxQueued });
  d.subscription = sub;
  return d;
}

class Detector implements DetectorHandle {
  subscription: Subscription | undefined;
  private readonly table: ProcessTable;
  private readonly hashes: HashQueue;
  private readonly procRoot: string;
  private readonly ctx: RuleContext;
  private readonly listeners = new Set<(f: Finding) => void>();
  private readonly inFlight = new Set<Promise<void>>();
  /** Overlay roots read from mountinfo; a failed read is retried after a second (`at`). */
  private readonly overlays = new Map<string, { overlay: OverlayRoot | null; at: number }>();
  private readonly mounts = new Map<number, { at: number; entries: MountinfoEntry[] }>();
  private readonly log: (obj: Record<string, unknown>, msg: string) => void;
  private closed = false;
  private readonly counts = { drift: 0, alerts: 0, hashed: 0, exitedBeforeHashing: 0, scriptsUnchecked: 0, mountsUnchecked: 0, alertsThrottled: 0 };
  /** Per rule: the second (ms / 1000) being counted and the alerts published in it. */
  private readonly alertBudget = new Map<string, { second: number; used: number }>();
  private readonly maxAlerts: number;

  constructor(private readonly options: DetectorOptions) {
    this.procRoot = options.procRoot ?? '/proc';
    this.table = new ProcessTable(options.maxProcesses ?? DEFAULT_MAX_PROCESSES, this.procRoot);
    this.hashes = new HashQueue({ ...DEFAULT_HASH, ...options.hash });
    this.log = options.log ?? (() => {});
    this.maxAlerts = options.maxAlertsPerRulePerSecond ?? DEFAULTS.detect.maxAlertsPerRulePerSecond;
    const metadata = options.metadata;
    this.ctx = { processes: this.table, container: (id) => metadata?.get(id) };
    // per type, whether any rule looks at it (findings excluded: they are judged where they are made)
    const wants = (t: EventType) => options.rules.wants(t);
    this.rulesWant = {
      exec: wants('exec'), exit: wants('exit'), fork: wants('fork'), open: wants('open'),
      connect: wants('connect'), accept: wants('accept'), dns: wants('dns'), drift: false, alert: false,
    };
  }

  /** Per type, whether a rule looks at it; findings are judged where they are made, never again. */
  private readonly rulesWant: Record<EventType, boolean>;

  readonly process = (events: AmberEvent[]): void => {
    if (this.closed) return;
    const rules = this.options.rules;
    const want = this.rulesWant;
    for (let i = 0; i < events.length; i++) {
      const ev = events[i];
      const type = ev.type;
      if (type === 'exec' || type === 'fork' || type === 'exit') {
        this.table.observe(ev);
        if (type === 'exec' && ev.containerId !== '') this.checkDrift(ev);
      }
      if (!want[type]) continue;
      const decision = rules.evaluate(ev, this.ctx);
      if (decision !== null && decision.action !== 'record') this.alert(ev, decision.action, decision.rules);
    }
  };

  onFinding(listener: (finding: Finding) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  stats(): DetectorStats {
    return {
      ...this.counts,
      hashRefused: this.hashes.refused,
      processes: this.table.size,
      pending: this.inFlight.size,
    };
  }

  async settled(): Promise<void> {
    while (this.inFlight.size > 0) await Promise.all([...this.inFlight]);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.subscription?.close();
    this.hashes.close();
  }

  // --- drift ---

  private checkDrift(ev: ExecEvent): void {
    if (ev.upperLayer || ev.fileless) {
      let pinned = this.pinExe(ev);
      let from: DriftEvent['hashedFrom'] = 'exe';
      const overlay = ev.fileless ? null : this.overlayOf(ev);
      if (pinned === EXITED && overlay !== null) {
        // Gone already (a drop-run-exit takes a millisecond): the upper layer still has the file.
        const onLayer = openUnder(overlay.upperdir, ev.exePath);
        if (typeof onLayer !== 'string') {
          if (Number(onLayer.stat.ctimeNs) <= ev.ts) {
            pinned = onLayer;
            from = 'upperdir';
          } else {
            closeSync(onLayer.fd);
            pinned = `${EXITED}; the file on the upper layer changed after the exec`;
          }
        }
      }
      this.finish(ev, { reason: ev.fileless ? 'fileless' : 'upper-layer', subject: 'executable', path: ev.exePath, pinned, from, overlay });
      return;
    }
    if (ev.script !== '') {
      const overlay = this.overlayOf(ev);
      if (overlay === null) {
        this.counts.scriptsUnchecked++;
        return;
      }
      // The script is on the upper layer when the upperdir holds its path (upper shadows lower).
      const pinned = openUnder(overlay.upperdir, ev.script);
      if (typeof pinned === 'string') return; // not on the upper layer: from the image
      this.finish(ev, { reason: 'upper-layer', subject: 'script', path: ev.script, pinned, from: 'script', overlay });
      return;
    }
    if (this.options.writableMounts) this.checkWritableMount(ev);
  }

  /** /proc/<pid>/exe, checked to still be the exec's file (the process may have executed another since). */
  private pinExe(ev: ExecEvent): Pinned | string {
    const pinned = openExe(this.procRoot, ev.pid);
    if (typeof pinned === 'string') return pinned;
    let now = '';
    try {
      now = readlinkExe(this.procRoot, ev.pid);
    } catch {
      // gone between open and readlink: the fd is the exec's file or a later one; keep it only if the path agreed
    }
    if (now !== ev.exePath) {
      closeSync(pinned.fd);
      return now === '' ? EXITED : 'the process executed another file before hashing';
    }
    return pinned;
  }

  private checkWritableMount(ev: ExecEvent): void {
    const mount = this.mountOf(ev.pid, ev.mntns, ev.exePath);
    if (mount === null || mount.mountPoint === '/') return;
    if (!mount.superOptions.some(([k]) => k === 'rw') || PSEUDO_FS.has(mount.fsType)) return;
    const pinned = this.pinExe(ev);
    if (typeof pinned === 'string') {
      this.counts.mountsUnchecked++; // cannot tell whether it was written after the start
      return;
    }
    const md = this.options.metadata?.get(ev.containerId);
    const startNs = md?.startedAt ? Date.parse(md.startedAt) * 1e6 : NaN;
    const written = Math.max(Number(pinned.stat.mtimeNs), Number(pinned.stat.ctimeNs));
    if (!(written > startNs)) {
      closeSync(pinned.fd);
      return;
    }
    this.finish(ev, { reason: 'writable-mount', subject: 'executable', path: ev.exePath, pinned, from: 'exe', overlay: null });
  }

  private mountOf(pid: number, mntns: number, path: string): MountinfoEntry | null {
    let cached = this.mounts.get(mntns);
    const now = Date.now();
    if (cached === undefined || now - cached.at > DEFAULTS.detect.mountCacheMs) {
      let entries: MountinfoEntry[] = [];
      try {
        entries = readFileSync(`${this.procRoot}/${pid}/mountinfo`, 'utf8')
          .split('\n')
          .map(parseMountinfoLine)
          .filter((e): e is MountinfoEntry => e !== null)
          .sort((a, b) => b.mountPoint.length - a.mountPoint.length);
      } catch {
        return null;
      }
      cached = { at: now, entries };
      if (this.mounts.size >= 1024) this.mounts.clear();
      this.mounts.set(mntns, cached);
    }
    for (const e of cached.entries) {
      if (e.mountPoint === '/' || path === e.mountPoint || path.startsWith(`${e.mountPoint}/`)) return e;
    }
    return null;
  }

  /** The container's overlay root: from its metadata, else from the process's mountinfo (read once per container). */
  private overlayOf(ev: ExecEvent): OverlayRoot | null {
    const md = this.options.metadata?.get(ev.containerId);
    if (md?.overlay) return md.overlay;
    const cached = this.overlays.get(ev.containerId);
    const now = Date.now();
    if (cached !== undefined && (cached.at === 0 || now - cached.at < 1000)) return cached.overlay;
    let overlay: OverlayRoot | null = null;
    let at = 0;
    try {
      overlay = parseOverlayRoot(readFileSync(`${this.procRoot}/${ev.pid}/mountinfo`, 'utf8'));
    } catch {
      at = now; // the process is gone: another of the container's may answer, a second from now
    }
    if (this.overlays.size >= 4096) this.overlays.clear();
    this.overlays.set(ev.containerId, { overlay, at });
    return overlay;
  }

  private finish(
    ev: ExecEvent,
    found: {
      reason: DriftEvent['reason'];
      subject: DriftEvent['subject'];
      path: string;
      pinned: Pinned | string;
      from: DriftEvent['hashedFrom'];
      overlay: OverlayRoot | null;
    },
  ): void {
    const md0 = this.options.metadata?.get(ev.containerId);
    const ancestry = this.table.ancestry(ev.pid, ev.containerId, md0?.initPid ?? 0, ev.mntns);
    // What the layers say now: the container may be removed before the async part runs.
    const imageFile = found.reason === 'fileless' || found.overlay === null ? null : imageCopy(found.overlay.lowerdirs, found.path);
    const change: DriftEvent['change'] =
      found.reason === 'fileless' ? 'fileless' : found.overlay === null ? 'unknown' : imageFile ? 'modified' : 'created';
    const pinned = found.pinned;
    const file = typeof pinned === 'string' ? null : facts(pinned.stat);
    if (typeof pinned === 'string' && pinned.startsWith(EXITED)) this.counts.exitedBeforeHashing++;
    if (found.from === 'upperdir') this.counts.exitedBeforeHashing++;
    const work = (async () => {
      const hash: HashResult = typeof pinned === 'string' ? { sha256: '', hashedBytes: 0, hashError: pinned } : await this.hashes.hash(pinned);
      if (hash.hashError === '') this.counts.hashed++;
      const md = md0 ?? (await this.waitMetadata(ev.containerId));
      const startNs = md?.startedAt ? Date.parse(md.startedAt) * 1e6 : NaN;
      const since = (t: number | undefined) => (t === undefined || Number.isNaN(startNs) ? null : t - startNs);
      const drift: DriftEvent = {
        ...common(ev, 'drift'),
        action: 'record',
        rules: [],
        reason: found.reason,
        subject: found.subject,
        path: found.path,
        change,
        file,
        mtimeSinceStartNs: since(file?.mtime),
        ctimeSinceStartNs: since(file?.ctime),
        imageFile,
        sha256: hash.sha256,
        hashedBytes: hash.hashedBytes,
        hashError: hash.hashError,
        hashedFrom: hash.hashError === '' ? found.from : '',
        exec: { filename: ev.filename, exePath: ev.exePath, args: ev.args, script: ev.script },
        ancestry,
        containerMetadata: containerOf(md),
      } as DriftEvent;
      const decision = this.options.rules.evaluate(drift, this.ctx);
      if (decision !== null) {
        drift.action = decision.action;
        drift.rules = decision.rules;
      }
      this.counts.drift++;
      this.publish(drift);
    })().catch((err: unknown) => this.log({ err: (err as Error).message, pid: ev.pid }, 'detector: a drift finding failed'));
    this.inFlight.add(work);
    void work.finally(() => this.inFlight.delete(work));
  }

  private async waitMetadata(id: string): Promise<ContainerMetadata | undefined> {
    const metadata = this.options.metadata;
    if (!metadata) return undefined;
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<undefined>((resolve) => {
      timer = setTimeout(() => resolve(undefined), this.options.metadataWaitMs ?? DEFAULTS.detect.metadataWaitMs);
    });
    try {
      return await Promise.race([metadata.lookup(id), timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  // --- alerts ---

  private alert(ev: AmberEvent, action: Action, rules: string[]): void {
    if (action === 'alert' && this.throttled(rules[0])) {
      this.counts.alertsThrottled++;
      return;
    }
    const md = ev.containerId === '' ? undefined : this.options.metadata?.get(ev.containerId);
    const alert: AlertEvent = {
      ...common(ev, 'alert'),
      action,
      rules,
      event: ev,
      ancestry: this.table.ancestry(ev.pid, ev.containerId, md?.initPid ?? 0, ev.mntns),
      containerMetadata: containerOf(md),
    } as AlertEvent;
    this.counts.alerts++;
    this.publish(alert);
  }

  private throttled(rule: string): boolean {
    const second = Math.floor(Date.now() / 1000);
    let b = this.alertBudget.get(rule);
    if (b === undefined) {
      b = { second, used: 0 };
      this.alertBudget.set(rule, b);
    }
    if (b.second !== second) {
      b.second = second;
      b.used = 0;
    }
    return ++b.used > this.maxAlerts;
  }

  private publish(finding: Finding): void {
    if (this.closed) return;
    this.options.pipeline.publish([finding]);
    for (const l of this.listeners) {
      try {
        l(finding);
      } catch (err) {
        this.log({ err: (err as Error).message }, 'detector: a finding listener threw');
      }
    }
  }
}

const PSEUDO_FS = new Set(['proc', 'sysfs', 'devtmpfs', 'devpts', 'cgroup', 'cgroup2', 'mqueue', 'securityfs', 'debugfs', 'tracefs', 'bpf']);

function readlinkExe(procRoot: string, pid: number): string {
  return readlinkSync(`${procRoot}/${pid}/exe`);
}

/** The common fields of an event, for a finding about it (a literal with every field: one shape for V8). */
function common<T extends 'drift' | 'alert'>(ev: AmberEvent, type: T): CommonFields & { type: T } {
  return {
    type,
    ts: ev.ts,
    pid: ev.pid,
    tid: ev.tid,
    ppid: ev.ppid,
    uid: ev.uid,
    gid: ev.gid,
    comm: ev.comm,
    cgroupId: ev.cgroupId,
    containerId: ev.containerId,
    mntns: ev.mntns,
    netns: ev.netns,
  } as CommonFields & { type: T };
}

function containerOf(md: ContainerMetadata | undefined): FindingContainer | null {
  if (!md) return null;
  return { runtime: md.runtime, name: md.name, image: md.image, imageId: md.imageId, startedAt: md.startedAt, pod: md.pod };
}
