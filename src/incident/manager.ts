/**
 * The agent's incidents: opened by `incident` findings (drift, rules) and by
 * people (API), joined per container within incident.joinWindow, captured
 * (capture.ts) at most maxConcurrent at once with at most maxQueued waiting
 * and at most maxPerHour opened, then answered (responses), shipped (uploads)
 * and bounded on disk (retention). What it refuses or drops is counted and
 * logged: a trigger flood costs bounded work.
 */
import { promises as fsp, readFileSync } from 'node:fs';
import * as path from 'node:path';
import type { Logger } from 'pino';
import type { EventBuffer } from '../buffer';
import { parseProcCgroup } from '../containers/cgroup-path';
import type { ContainerMetadata, ContainerMetadataStore } from '../containers/metadata';
import type { DetectorHandle } from '../detect/detector';
import type { Response, RuleSet } from '../detect/rules';
import type { AlertEvent, DriftEvent } from '../sensor/events';
import { BundleWriter, cleanIncompleteBundles, fileChunks, hashStream, listBundles, packBundle } from './bundle';
import { capture, type CaptureOptions } from './capture';
import { CgroupFreezer, cgroupsOf, type FrozenCgroup } from './freezer';
import {
  IncidentError,
  type Incidents,
  type IncidentState,
  type IncidentSummary,
  type ResponseSummary,
  type TriggerRequest,
  type TriggerResult,
  type UploadSummary,
} from './incidents';
import { INCIDENTS_DIR, MANIFEST_FILE, type Manifest, SIGNATURE_FILE, type Trigger } from './manifest';
import { Responses } from './responses';
import { enforceRetention } from './retention';
import type { SigningKey } from './signing';
import type { UploadQueue } from './uploads';

export interface IncidentLimits {
  /** Triggers for a container with an incident opened less than this ago join it. */
  joinWindowMs: number;
  maxConcurrent: number;
  /** Incidents waiting for a capture slot; more are refused (counted). */
  maxQueued: number;
  /** Incidents opened per hour at most; more are refused (counted). */
  maxPerHour: number;
  retention: { maxBytes: number; maxCount: number };
}

export interface IncidentManagerOptions {
  dataDir: string;
  node: string;
  version: string;
  buffer: EventBuffer;
  containers: ContainerMetadataStore;
  key: SigningKey;
  capture: CaptureOptions;
  limits: IncidentLimits;
  /** The rules, for their responses (respond: [...]). */
  rules?: RuleSet;
  uploads?: UploadQueue;
  responses?: Responses;
  freezer?: CgroupFreezer;
  procRoot?: string;
  log: Logger;
}

interface Open {
  id: string;
  state: IncidentState;
  createdMs: number;
  trigger: Trigger;
  containerId: string;
  pid: number;
  metadata: ContainerMetadata | null;
  joined: number;
  error: string;
  bytes: number;
  respond: Response[];
  responses: ResponseSummary[];
  /** Made right after the incident is (its directory names it, and the id); a trigger for the container joins it meanwhile. */
  bundle: BundleWriter | undefined;
  created: Promise<unknown>;
  done: Promise<void>;
}

export interface IncidentStats {
  opened: number;
  joined: number;
  refusedQueueFull: number;
  refusedRate: number;
  captured: number;
  failed: number;
}

const INCIDENT_ID = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

export class IncidentManager implements Incidents {
  private readonly open = new Map<string, Open>();
  /** Per container, the incident it joins within joinWindowMs. */
  private readonly byContainer = new Map<string, Open>();
  private readonly waiting: Array<{ incident: Open; wake: () => void }> = [];
  private running = 0;
  private readonly openedAt: number[] = [];
  /** Freeze responses held until release (a freeze response lasts while the agent runs; see README). */
  private readonly frozen = new Map<string, FrozenCgroup>();
  private readonly counts: IncidentStats = { opened: 0, joined: 0, refusedQueueFull: 0, refusedRate: 0, captured: 0, failed: 0 };
  private closed = false;
  private readonly digests = new Map<string, { size: number; mtimeMs: number; sha256: string }>();
  private unsubscribe: (() => void) | undefined;

  private constructor(private readonly o: IncidentManagerOptions) {}

  /** Thaws what a previous run froze, removes unfinished bundles, resumes uploads, applies retention. */
  static async start(options: IncidentManagerOptions): Promise<IncidentManager> {
    const m = new IncidentManager(options);
    const thawed = (await options.freezer?.recover()) ?? [];
    if (thawed.length > 0) options.log.warn({ event: 'incident', thawed }, 'thawed cgroups a previous run left frozen');
    const cleaned = await cleanIncompleteBundles(options.dataDir);
    if (cleaned.removed.length > 0 || cleaned.packed.length > 0) options.log.warn({ event: 'incident', ...cleaned }, 'unfinished incident bundles of a previous run');
    await options.uploads?.start();
    await m.retention();
    return m;
  }

  /** Opens incidents for the detector's `incident` findings. */
  follow(detector: DetectorHandle): void {
    this.unsubscribe = detector.onFinding((f) => {
      if (f.action !== 'incident') return;
      this.fromFinding(f).catch((err: unknown) =>
        this.o.log.warn({ event: 'incident', error: (err as Error).message, finding: f.type, pid: f.pid }, 'a finding could not open an incident'),
      );
    });
  }

  stats(): IncidentStats & { running: number; queued: number } {
    return { ...this.counts, running: this.running, queued: this.waiting.length };
  }

  publicKey(): string {
    return this.o.key.publicKeyPem;
  }

  async trigger(request: TriggerRequest): Promise<TriggerResult> {
    const targets = [request.container, request.pod, request.pid].filter((t) => t !== undefined);
    if (targets.length !== 1) throw new IncidentError('invalid', 'give exactly one of container, pod or pid');
    let containerId = '';
    let metadata: ContainerMetadata | null = null;
    let pid = 0;
    if (request.container !== undefined) {
      metadata = this.containerByPrefix(request.container);
      containerId = metadata.containerId;
    } else if (request.pod !== undefined) {
      metadata = this.containerOfPod(request.pod);
      containerId = metadata.containerId;
    } else {
      pid = request.pid!;
      if (!Number.isSafeInteger(pid) || pid <= 0) throw new IncidentError('invalid', `not a pid: ${String(request.pid)}`);
      containerId = this.containerOfPid(pid);
      metadata = containerId ? (this.o.containers.get(containerId) ?? null) : null;
    }
    if (!pid) pid = metadata?.initPid ?? 0;
    const trigger: Trigger = { kind: 'manual', reason: request.reason || 'triggered by hand', requestedBy: request.requestedBy };
    return this.openIncident(trigger, containerId, pid, metadata, []);
  }

  private async fromFinding(f: DriftEvent | AlertEvent): Promise<void> {
    const rules = f.rules;
    const trigger: Trigger = {
      kind: f.type === 'drift' ? 'drift' : 'rule',
      rule: rules[0] ?? (f.type === 'drift' ? 'drift' : ''),
      reason: f.type === 'drift' ? driftReason(f) : `${f.event.type} matched ${rules.join(', ')}`,
      event: f,
    };
    const metadata = f.containerId ? ((await this.o.containers.lookup(f.containerId)) ?? null) : null;
    await this.openIncident(trigger, f.containerId, f.pid, metadata, this.o.rules?.responses(rules) ?? []);
  }

  private async openIncident(trigger: Trigger, containerId: string, pid: number, metadata: ContainerMetadata | null, respond: Response[]): Promise<TriggerResult> {
    if (this.closed) throw new IncidentError('unavailable', 'the agent is stopping');
    const key = containerId || `pid:${pid}`;
    const now = Date.now();
    const current = this.byContainer.get(key);
    if (current && now - current.createdMs < this.o.limits.joinWindowMs) {
      await current.created; // its id is its bundle's
      if (!current.id) throw new IncidentError('unavailable', 'the incident this trigger joins could not create its bundle');
      current.joined++;
      this.counts.joined++;
      for (const r of respond) if (!current.respond.includes(r)) current.respond.push(r);
      return { id: current.id, joined: true, state: current.state };
    }
    while (this.openedAt.length > 0 && now - this.openedAt[0] > 3_600_000) this.openedAt.shift();
    if (this.openedAt.length >= this.o.limits.maxPerHour) {
      this.counts.refusedRate++;
      this.o.log.warn({ event: 'incident-refused', containerId, pid, refused: this.counts.refusedRate, limit: this.o.limits.maxPerHour }, 'incident refused: incident.maxPerHour reached');
      throw new IncidentError('exhausted', `incident refused: ${this.o.limits.maxPerHour} incidents opened in the last hour (incident.maxPerHour)`);
    }
    if (this.running >= this.o.limits.maxConcurrent && this.waiting.length >= this.o.limits.maxQueued) {
      this.counts.refusedQueueFull++;
      this.o.log.warn({ event: 'incident-refused', containerId, pid, refused: this.counts.refusedQueueFull, limit: this.o.limits.maxQueued }, 'incident refused: the capture queue is full (incident.maxQueued)');
      throw new IncidentError('exhausted', `incident refused: ${this.o.limits.maxQueued} captures already wait (incident.maxQueued)`);
    }
    this.openedAt.push(now);
    // the id is the bundle's: its directory is made now, so the caller can follow the incident at once
    const incident: Open = {
      id: '',
      state: 'queued',
      createdMs: now,
      trigger,
      containerId,
      pid,
      metadata,
      joined: 0,
      error: '',
      bytes: 0,
      respond: [...respond],
      responses: [],
      bundle: undefined,
      created: Promise.resolve(),
      done: Promise.resolve(),
    };
    this.byContainer.set(key, incident); // before the await: a concurrent trigger joins it
    this.counts.opened++;
    let bundle: BundleWriter;
    try {
      const creating = BundleWriter.create(this.o.dataDir, now);
      incident.created = creating.catch(() => {});
      bundle = await creating;
    } catch (err) {
      this.byContainer.delete(key);
      throw new IncidentError('unavailable', `cannot create the incident's bundle: ${(err as Error).message}`);
    }
    incident.bundle = bundle;
    incident.id = bundle.id;
    this.open.set(incident.id, incident);
    incident.done = this.schedule(incident);
    return { id: incident.id, joined: false, state: incident.state };
  }

  private async schedule(incident: Open): Promise<void> {
    if (this.running >= this.o.limits.maxConcurrent) {
      await new Promise<void>((wake) => this.waiting.push({ incident, wake }));
    }
    this.running++;
    try {
      await this.run(incident);
    } finally {
      this.running--;
      this.waiting.shift()?.wake();
    }
  }

  private async run(incident: Open): Promise<void> {
    incident.state = 'capturing';
    this.o.log.info({ event: 'incident', id: incident.id, containerId: incident.containerId, pid: incident.pid, trigger: incident.trigger.kind, rule: incident.trigger.rule }, 'incident: capturing');
    const bundle = incident.bundle;
    if (!bundle) return; // never scheduled without its bundle (openIncident makes it first)
    try {
      incident.trigger.joined = incident.joined;
      const result = await capture(
        bundle,
        { trigger: incident.trigger, at: incident.trigger.event?.ts ?? Date.now() * 1e6, containerId: incident.containerId, pid: incident.pid, metadata: incident.metadata },
        { ...this.o.capture, procRoot: this.o.procRoot },
        { dataDir: this.o.dataDir, node: this.o.node, version: this.o.version, buffer: this.o.buffer, freezer: this.o.freezer ?? null, key: this.o.key },
      );
      incident.state = 'signed';
      this.counts.captured++;
      this.o.log.info({
        event: 'incident',
        id: incident.id,
        durationMs: result.durationMs,
        frozenMs: result.frozenMs,
        dumpedBytes: result.dumpedBytes,
        dir: result.dir,
        problems: result.problems,
      }, 'incident: bundle signed and verified');
      await this.respond(incident);
      const packStarted = Date.now();
      await packBundle(path.join(this.o.dataDir, INCIDENTS_DIR), incident.id);
      // hashed once here and kept (archive() caches it): uploads, show and pull use that digest
      const packed = await this.archive(incident.id);
      if (!packed) throw new Error(`the archive ${result.archive} is missing after packing`);
      incident.bytes = packed.size;
      incident.state = 'complete';
      this.o.log.info({ event: 'incident', id: incident.id, archive: packed.path, bytes: packed.size, packMs: Date.now() - packStarted }, 'incident: archive packed');
      if (this.o.uploads) await this.o.uploads.enqueue(incident.id, packed.path, { size: packed.size, sha256: packed.sha256 });
      await this.retention();
    } catch (err) {
      incident.state = 'failed';
      incident.error = (err as Error).message;
      this.counts.failed++;
      this.o.log.error({ event: 'incident', id: incident.id, error: incident.error }, 'incident: capture failed');
      await bundle.abandon().catch(() => {});
    }
  }

  /** The rule's responses, after the capture (the evidence first). Each is logged, and shown by `amber incidents show`. */
  private async respond(incident: Open): Promise<void> {
    const responses = this.o.responses;
    if (incident.respond.length === 0) return;
    const at = () => new Date().toISOString();
    const cgroupPath = this.cgroupOf(incident);
    for (const kind of incident.respond) {
      try {
        if (!cgroupPath) throw new Error('the container has no cgroup v2 path (gone?)');
        if (kind === 'cut-network') {
          if (!responses) throw new Error('responses are off');
          await responses.cutNetwork({ incidentId: incident.id, cgroupPath });
          incident.responses.push({ kind, state: 'in force', at: at() });
        } else if (kind === 'kill') {
          if (!responses) throw new Error('responses are off');
          const r = await responses.killContainer({ cgroupPath });
          incident.responses.push({ kind, state: r.killed ? 'done' : `not all killed: ${r.remaining} left`, at: at() });
        } else {
          if (!this.o.freezer) throw new Error('the freezer is off');
          this.frozen.set(incident.id, await this.o.freezer.freeze(incident.pid || incident.metadata?.initPid || 0));
          incident.responses.push({ kind, state: 'in force', at: at() });
        }
        this.o.log.warn({ event: 'incident-response', id: incident.id, kind, cgroupPath }, `incident response: ${kind}`);
      } catch (err) {
        incident.responses.push({ kind, state: `failed: ${(err as Error).message}`, at: at() });
        this.o.log.error({ event: 'incident-response', id: incident.id, kind, error: (err as Error).message }, `incident response failed: ${kind}`);
      }
    }
  }

  private cgroupOf(incident: Open): string | null {
    const pid = incident.pid || incident.metadata?.initPid || 0;
    for (const p of [pid, incident.metadata?.initPid ?? 0]) {
      if (!p) continue;
      try {
        const v2 = cgroupsOf(readFileSync(path.join(this.o.procRoot ?? '/proc', String(p), 'cgroup'), 'utf8')).v2;
        if (v2 && v2 !== '/') return v2;
      } catch {
        // gone: try the next
      }
    }
    return null;
  }

  async release(id: string): Promise<ResponseSummary[]> {
    checkId(id);
    const incident = this.open.get(id);
    const out: ResponseSummary[] = [];
    const at = new Date().toISOString();
    const frozen = this.frozen.get(id);
    if (frozen) {
      await frozen.thaw();
      this.frozen.delete(id);
      out.push({ kind: 'freeze', state: 'released', at });
    }
    if (this.o.responses) {
      const cut = await this.o.responses.releaseNetwork(id).catch((err: unknown) => ({ released: false, reason: (err as Error).message }));
      if (cut.released) out.push({ kind: 'cut-network', state: 'released', at });
    }
    if (!incident && out.length === 0 && !(await this.exists(id))) throw new IncidentError('not-found', `no incident ${id}`);
    if (incident) for (const r of incident.responses) if (out.some((o) => o.kind === r.kind)) r.state = 'released';
    this.o.log.warn({ event: 'incident-release', id, released: out.map((r) => r.kind) }, 'incident responses released');
    return out;
  }

  async list(): Promise<IncidentSummary[]> {
    const out = new Map<string, IncidentSummary>();
    for (const b of await listBundles(this.o.dataDir)) {
      if (!b.complete) continue;
      const summary = await this.summaryOfBundle(b.id);
      if (summary) out.set(b.id, summary);
    }
    for (const i of this.open.values()) out.set(i.id, { ...(out.get(i.id) ?? this.summaryOfOpen(i)), ...this.live(i) });
    return [...out.values()].sort((a, b) => a.id.localeCompare(b.id));
  }

  async show(id: string): ReturnType<Incidents['show']> {
    checkId(id);
    const manifest = await this.readManifest(id);
    const incident = this.open.get(id);
    if (!manifest && !incident) return null;
    const summary = manifest ? { ...this.summaryOfManifest(manifest.object), ...(incident ? this.live(incident) : {}) } : this.summaryOfOpen(incident!);
    summary.uploads = this.uploadsOf(id);
    summary.bytes = (await this.archive(id))?.size ?? 0;
    const signature = manifest ? await fsp.readFile(path.join(this.o.dataDir, INCIDENTS_DIR, id, SIGNATURE_FILE)).catch(() => undefined) : undefined;
    return { summary, manifest: manifest?.bytes ?? null, manifestObject: manifest?.object ?? null, signature };
  }

  async archive(id: string): Promise<{ path: string; size: number; sha256: string } | null> {
    checkId(id);
    const file = path.join(this.o.dataDir, INCIDENTS_DIR, `${id}.tar.gz`);
    try {
      const st = await fsp.lstat(file);
      if (!st.isFile()) return null;
      // an archive is written once (by rename) and never changed: its digest is kept per id, size and mtime
      const known = this.digests.get(id);
      if (known && known.size === st.size && known.mtimeMs === st.mtimeMs) return { path: file, size: st.size, sha256: known.sha256 };
      const sha256 = this.o.uploads?.status(id)?.sha256 ?? (await sha256File(file));
      this.digests.set(id, { size: st.size, mtimeMs: st.mtimeMs, sha256 });
      return { path: file, size: st.size, sha256 };
    } catch {
      return null;
    }
  }

  /** Stops taking triggers, waits for the captures under way (their freezes thawed), releases freeze responses. */
  async close(): Promise<void> {
    this.closed = true;
    this.unsubscribe?.();
    await Promise.allSettled([...this.open.values()].map((i) => i.done));
    for (const [id, f] of this.frozen) {
      await f.thaw().catch(() => {});
      this.frozen.delete(id);
    }
    await this.o.uploads?.close();
  }

  // ---- helpers ----

  private async retention(): Promise<void> {
    const inProgress = new Set([...this.open.values()].filter((i) => i.state !== 'complete' && i.state !== 'failed').map((i) => i.id));
    const r = await enforceRetention(
      this.o.dataDir,
      { ...this.o.limits.retention, inProgress, log: this.o.log },
      this.o.uploads ?? null,
    );
    for (const id of r.removed) {
      this.open.delete(id);
      this.digests.delete(id);
    }
  }

  private containerByPrefix(text: string): ContainerMetadata {
    if (!/^[0-9a-f]{12,64}$/.test(text)) throw new IncidentError('invalid', `container: "${text}" is not a container ID (12 to 64 hex digits)`);
    const found = this.o.containers.all().filter((c) => c.containerId.startsWith(text) && c.removedAt === '');
    if (found.length === 0) throw new IncidentError('not-found', `no running container ${text} on this node`);
    if (found.length > 1) throw new IncidentError('invalid', `container ${text} is ambiguous: ${found.map((c) => c.containerId.slice(0, 16)).join(', ')}`);
    return found[0];
  }

  private containerOfPod(pod: string): ContainerMetadata {
    const parts = pod.split('/');
    if (parts.length !== 2 || !parts[0] || !parts[1]) throw new IncidentError('invalid', `pod: "${pod}" is not NAMESPACE/NAME`);
    const found = this.o.containers
      .all()
      .filter((c) => c.removedAt === '' && c.pod?.namespace === parts[0] && c.pod.name === parts[1] && c.initPid > 0)
      .sort((a, b) => a.startedAt.localeCompare(b.startedAt));
    if (found.length === 0) throw new IncidentError('not-found', `no running container of pod ${pod} on this node`);
    // the pod's application container: the pause (sandbox) container is the one whose ID is the sandbox's
    return found.find((c) => c.name !== '' && !/^(pause|POD)$/i.test(c.name)) ?? found[0];
  }

  private containerOfPid(pid: number): string {
    let text: string;
    try {
      text = readFileSync(path.join(this.o.procRoot ?? '/proc', String(pid), 'cgroup'), 'utf8');
    } catch {
      throw new IncidentError('not-found', `no process ${pid} on this node`);
    }
    return parseProcCgroup(text)?.containerId ?? '';
  }

  private live(i: Open): Partial<IncidentSummary> {
    return { state: i.state, joined: i.joined, error: i.error, responses: i.responses, uploads: this.uploadsOf(i.id) };
  }

  private summaryOfOpen(i: Open): IncidentSummary {
    return {
      id: i.id,
      state: i.state,
      createdAt: new Date(i.createdMs).toISOString(),
      trigger: { kind: i.trigger.kind, rule: i.trigger.rule, reason: i.trigger.reason, requestedBy: i.trigger.requestedBy },
      containerId: i.containerId,
      pod: i.metadata?.pod ? `${i.metadata.pod.namespace}/${i.metadata.pod.name}` : '',
      container: i.metadata?.name ?? '',
      image: i.metadata?.image ?? '',
      joined: i.joined,
      bytes: i.bytes,
      error: i.error,
      uploads: this.uploadsOf(i.id),
      responses: i.responses,
    };
  }

  private summaryOfManifest(m: Manifest): IncidentSummary {
    const md = m.container?.metadata ?? null;
    return {
      id: m.id,
      state: 'complete',
      createdAt: m.createdAt,
      trigger: { kind: m.trigger.kind, rule: m.trigger.rule, reason: m.trigger.reason, requestedBy: m.trigger.requestedBy, joined: m.trigger.joined },
      containerId: m.container?.id ?? '',
      pod: md?.pod ? `${md.pod.namespace}/${md.pod.name}` : '',
      container: md?.name ?? '',
      image: md?.image ?? '',
      joined: m.trigger.joined ?? 0,
      bytes: 0,
      error: '',
      uploads: this.uploadsOf(m.id),
      responses: [],
    };
  }

  private async summaryOfBundle(id: string): Promise<IncidentSummary | null> {
    const m = await this.readManifest(id);
    if (!m) return null;
    const s = this.summaryOfManifest(m.object);
    s.bytes = (await this.archive(id).catch(() => null))?.size ?? 0;
    return s;
  }

  private async readManifest(id: string): Promise<{ bytes: Buffer; object: Manifest } | null> {
    try {
      const bytes = await fsp.readFile(path.join(this.o.dataDir, INCIDENTS_DIR, id, MANIFEST_FILE), { flag: 'r' });
      return { bytes, object: JSON.parse(bytes.toString('utf8')) as Manifest };
    } catch {
      return null;
    }
  }

  private async exists(id: string): Promise<boolean> {
    return (await this.readManifest(id)) !== null;
  }

  private uploadsOf(id: string): UploadSummary[] {
    const status = this.o.uploads?.status(id);
    if (!status) return [];
    return Object.entries(status.sinks).map(([sink, s]) => ({
      sink,
      state: s.failed ? 'failed' : s.pending ? 'pending' : 'uploaded',
      attempts: s.attempts,
      lastError: s.lastError ?? '',
      remote: s.remote ?? '',
    }));
  }
}

/** "a script created on the upper layer: /tmp/x.sh", "a fileless executable: /memfd:x (deleted)" */
function driftReason(f: DriftEvent): string {
  if (f.reason === 'fileless') return `a fileless ${f.subject}: ${f.path}`;
  const where = f.reason === 'upper-layer' ? 'the upper layer' : 'a writable mount';
  const how = f.change === 'created' || f.change === 'modified' ? `${f.change} on` : 'on';
  return `${f.subject === 'script' ? 'a script' : 'an executable'} ${how} ${where}: ${f.path}`;
}

function checkId(id: string): void {
  if (!INCIDENT_ID.test(id) || id.includes('..')) throw new IncidentError('invalid', `not an incident id: ${JSON.stringify(id.slice(0, 140))}`);
}

async function sha256File(file: string): Promise<string> {
  const fh = await fsp.open(file, 'r');
  try {
    return (await hashStream(fileChunks(fh))).sha256;
  } finally {
    await fh.close();
  }
}
