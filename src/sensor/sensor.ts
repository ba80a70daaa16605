/**
 * The sensor: loads the BPF programs through the addon, decodes each batch the
 * ring reader hands over, names containers and pairs DNS queries with their
 * responses. Consumers get arrays of events, never one call per event.
 */
import { ContainerResolver, type ContainerInfo } from '../containers/resolver';
import { DEFAULTS } from '../defaults';
import { loadBinding, type NativeSensor } from './binding';
import { DnsTracker, parseDnsMessage } from './dns';
import { FINDING_TYPES, SENSOR_EVENT_TYPES, type SensorEventType, type AmberEvent, type DnsEvent, type EventType } from './events';
import { preflight } from './preflight';
import { decodeBatch, KIND_NAMES, SyscallFamily, type DecodeContext } from './records';

export interface SensorOptions {
  /** Event types to record; default all. */
  types?: readonly EventType[];
  /** Ring buffer bytes (power of two, page multiple). */
  ringBytes?: number;
  /** Queued bytes that wake the reader before its timer does. */
  wakeupBytes?: number;
  /** The reader drains the ring at least this often. */
  pollMs?: number;
  batchBytes?: number;
  batchCount?: number;
  /**
   * Leave out this process's own events (the agent's reads of /proc, cgroupfs
   * and its segments). The kernel names the process, so this holds inside a
   * PID namespace too, where process.pid is not the kernel's tgid.
   */
  ignoreSelf?: boolean;
  /** How the kernel finds an overlay inode's upper dentry: BTF of ovl_inode, or the inode-size fallback. */
  overlayProbe?: 'btf' | 'inode-size';
  /** A DNS query with no response after this long yields an R event with rcode TIMEOUT. */
  dnsTimeoutMs?: number;
  /** cgroup v2 root; found (or mounted) when not given. */
  cgroupRoot?: string;
  log?: (obj: object, msg: string) => void;
  /** Told of each container when first seen and when its cgroup goes (container metadata hooks in here). */
  containers?: { onContainer(info: ContainerInfo): void; onContainerGone(containerId: string): void };
}

export interface SensorStats {
  /** Events delivered, per type. */
  received: Record<SensorEventType, number>;
  /** Records the kernel could not queue (ring full), per type. Never silent. */
  drops: Record<SensorEventType, number>;
  records: number;
  batches: number;
  /** Times the reader waited for JavaScript to take a batch. */
  stalls: number;
  unknownKinds: number;
  /** Records whose size could not frame them; each loses the rest of its batch (unframedBytes). */
  unframedRecords: number;
  unframedBytes: number;
  dnsPending: number;
}

export type EventsListener = (events: AmberEvent[]) => void;

/** BPF programs (bpf/*.bpf.c) behind each event type. */
const PROGRAMS: Record<EventType, string[]> = {
  exec: ['amber_exec'],
  exit: ['amber_exit'],
  fork: ['amber_fork'],
  open: ['amber_sys_exit'],
  connect: ['amber_sys_exit'],
  accept: ['amber_sys_exit'],
  dns: ['amber_dns_egress', 'amber_dns_ingress'],
  // findings: the detector makes them, no program reports them
  drift: [],
  alert: [],
};
/** The syscall families the sys_exit dispatcher serves for each type. */
const SYSCALL_FAMILY: Partial<Record<EventType, number>> = {
  open: SyscallFamily.file,
  connect: SyscallFamily.net,
  accept: SyscallFamily.net,
};
/** Always loaded: they name the containers. */
const CGROUP_PROGRAMS = ['amber_cgroup_mkdir', 'amber_cgroup_rmdir'];

/** All of a per-type count (events received, drops). */
export function countTotal(counts: Record<SensorEventType, number>): number {
  let total = 0;
  for (const t of SENSOR_EVENT_TYPES) total += counts[t];
  return total;
}

/** Counters of what the kernel reports (findings are the detector's: not counted here). */
function perType(): Record<SensorEventType, number> {
  return Object.fromEntries(SENSOR_EVENT_TYPES.map((t) => [t, 0])) as Record<SensorEventType, number>;
}

export const DEFAULT_SENSOR = DEFAULTS.sensor;

export class Sensor {
  private readonly received = perType();
  private unknownKinds = 0;
  private unframedRecords = 0;
  private unframedBytes = 0;
  private expiryTimer?: NodeJS.Timeout;
  private stopping?: Promise<SensorStats>;

  private constructor(
    private readonly native: NativeSensor,
    private readonly types: ReadonlySet<EventType>,
    private readonly dns: DnsTracker,
    private readonly resolver: ContainerResolver,
    private readonly onEvents: EventsListener,
  ) {}

  static async start(options: SensorOptions, onEvents: EventsListener): Promise<Sensor> {
    const types = new Set((options.types ?? SENSOR_EVENT_TYPES).filter((t) => !(FINDING_TYPES as readonly string[]).includes(t)));
    const host = preflight({ needCgroupSkb: types.has('dns'), cgroupRoot: options.cgroupRoot });
    const binding = loadBinding();
    const resolver = new ContainerResolver({
      cgroupRoot: host.cgroupRoot,
      log: options.log,
      onContainer: options.containers && ((info) => options.containers!.onContainer(info)),
      onContainerGone: options.containers && ((id) => options.containers!.onContainerGone(id)),
    });
    await resolver.init();
    const dnsTimeoutNs = (options.dnsTimeoutMs ?? DEFAULT_SENSOR.dnsTimeoutMs) * 1e6;
    const dns = new DnsTracker({ timeoutNs: dnsTimeoutNs });

    const programs = new Set(CGROUP_PROGRAMS);
    for (const t of types) for (const p of PROGRAMS[t]) programs.add(p);
    const ringBytes = options.ringBytes ?? DEFAULT_SENSOR.ringBytes;

    let sensor: Sensor | undefined;
    const ctx: DecodeContext = {
      bootToEpochNs: binding.bootToEpochNs(),
      containerId: (cgroupId, pid, mntns) => resolver.containerId(cgroupId, pid, mntns),
      onCgroup: (id, path, removed) => resolver.onCgroup(id, path, removed),
      dns: (common, payload, tcp, ingress) => {
        const msg = parseDnsMessage(payload, tcp);
        if (!msg) return null;
        // one literal, not spreads: V8 builds spread objects ~30x slower
        const ev: DnsEvent = {
          type: 'dns', ts: common.ts, pid: common.pid, tid: common.tid, ppid: common.ppid, uid: common.uid, gid: common.gid,
          comm: common.comm, cgroupId: common.cgroupId, containerId: common.containerId, mntns: common.mntns, netns: common.netns,
          proto: common.proto, family: common.family, saddr: common.saddr, sport: common.sport, daddr: common.daddr, dport: common.dport,
          qr: msg.qr, id: msg.id, name: msg.name, qtype: msg.qtype, rcode: msg.rcode, answers: msg.answers,
          answersTruncated: msg.answersTruncated,
        };
        if (msg.qr === 'Q' && !ingress) dns.onQuery(ev);
        else if (msg.qr === 'R' && ingress) dns.onResponse(ev);
        return ev;
      },
      onUnknown: () => {
        if (sensor) sensor.unknownKinds++;
      },
      onUnframed: (bytes) => {
        if (!sensor) return;
        sensor.unframedRecords++;
        sensor.unframedBytes += bytes;
      },
    };
    const native = new binding.Sensor(
      {
        programs: [...programs],
        ringBytes,
        wakeupBytes: options.wakeupBytes ?? ringBytes * DEFAULT_SENSOR.wakeupFraction,
        pollMs: options.pollMs ?? DEFAULT_SENSOR.pollMs,
        batchBytes: options.batchBytes ?? DEFAULT_SENSOR.batchBytes,
        batchCount: options.batchCount ?? DEFAULT_SENSOR.batchCount,
        ignoreSelf: options.ignoreSelf ?? false,
        ovlByInodeSize: options.overlayProbe === 'inode-size',
        syscallFamilies: [...types].reduce((bits, t) => bits | (SYSCALL_FAMILY[t] ?? 0), 0),
        cgroupPath: host.cgroupRoot,
      },
      (batch) => {
        ctx.bootToEpochNs = binding.bootToEpochNs();
        const events: AmberEvent[] = [];
        decodeBatch(batch, ctx, events);
        sensor?.deliver(events);
      },
    );
    sensor = new Sensor(native, types, dns, resolver, onEvents);
    try {
      await native.start();
    } catch (err) {
      resolver.close();
      throw err;
    }
    sensor.expiryTimer = setInterval(() => sensor?.expireDns(), 100);
    sensor.expiryTimer.unref();
    return sensor;
  }

  /** Counts and hands on one batch, without the types nobody asked for (connect and accept share a family). */
  private deliver(events: AmberEvent[]): void {
    let out = events;
    if (this.types.size < SENSOR_EVENT_TYPES.length) out = events.filter((e) => this.types.has(e.type));
    if (out.length === 0) return;
    for (const e of out) this.received[e.type as SensorEventType]++;
    this.onEvents(out); // a fresh array per batch: the listener may keep it
  }

  private expireDns(): void {
    if (this.dns.pending() === 0) return;
    const timeouts = this.dns.expire(Date.now() * 1e6);
    if (timeouts.length > 0) this.deliver(timeouts);
  }

  stats(): SensorStats {
    const drops = perType();
    const raw = this.native.drops();
    for (let kind = 1; kind < raw.length; kind++) {
      const name = KIND_NAMES[kind] as SensorEventType;
      if (name in drops) drops[name] += raw[kind];
    }
    const reader = this.native.stats();
    return {
      received: { ...this.received },
      drops,
      records: reader.records,
      batches: reader.batches,
      stalls: reader.stalls,
      unknownKinds: this.unknownKinds,
      unframedRecords: this.unframedRecords,
      unframedBytes: this.unframedBytes,
      dnsPending: this.dns.pending(),
    };
  }

  programs(): string[] {
    return this.native.programs();
  }

  /** Detaches everything; resolves after the last batch was delivered. Idempotent. */
  stop(): Promise<SensorStats> {
    this.stopping ??= (async () => {
      clearInterval(this.expiryTimer);
      await this.native.stop();
      this.resolver.close();
      return this.stats();
    })();
    return this.stopping;
  }
}
