/**
 * The one mapping between decoded events (src/sensor/events.ts) and the API's
 * Event messages. fromProto builds each event with the keys in the order the
 * sensor's decoder does, so `JSON.stringify` of an event that crossed the API
 * is byte for byte what `amber trace --local -o json` prints.
 */
import type {
  Action,
  AlertEvent,
  AmberEvent,
  CommonFields,
  DnsEvent,
  DriftEvent,
  EventType,
  ExecEvent,
  FileFacts,
  FindingContainer,
  OpenEvent,
  ProcessInfo,
  Proto,
  SockFields,
} from '../sensor/events';
import type { ContainerFields } from '../containers/metadata-dir';
import type { EventFilter, Scope as FilterScope } from '../filter';
import {
  type Alert,
  DnsDirection,
  type Drift,
  type Event as EventMessage,
  type FileFacts as FileFactsMessage,
  type FindingContainer as ContainerMessage,
  type EventFilter as FilterMessage,
  Scope,
  type Sock,
  Transport,
} from './gen/amber';

export type { EventMessage };

/** The message of an event, with its container's joined fields when given (or when the event carries them). */
export function toProto(ev: AmberEvent, fields?: ContainerFields): EventMessage {
  const joined = fields ?? (typeof (ev as Partial<ContainerFields>).runtime === 'string' ? (ev as AmberEvent & ContainerFields) : undefined);
  const msg: EventMessage = {
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
    pod: joined?.pod,
    namespace: joined?.namespace,
    image: joined?.image,
    containerName: joined?.container,
    runtime: joined?.runtime,
    detail: undefined,
  };
  switch (ev.type) {
    case 'exec':
      msg.detail = {
        $case: 'exec',
        exec: {
          filename: ev.filename,
          exePath: ev.exePath,
          args: ev.args,
          argsTruncated: ev.argsTruncated,
          upperLayer: ev.upperLayer,
          fileless: ev.fileless,
          script: ev.script,
          pathTruncated: ev.pathTruncated,
          filenameRaw: ev.filenameRaw,
          exePathRaw: ev.exePathRaw,
          argsRaw: ev.argsRaw,
          scriptRaw: ev.scriptRaw,
        },
      };
      break;
    case 'exit':
      msg.detail = { $case: 'exit', exit: { exitCode: ev.exitCode, signal: ev.signal } };
      break;
    case 'fork':
      msg.detail = { $case: 'fork', fork: { childPid: ev.childPid } };
      break;
    case 'open':
      msg.detail = {
        $case: 'open',
        open: { path: ev.path, flags: ev.flags, flagNames: ev.flagNames, mode: ev.mode, ret: ev.ret, pathTruncated: ev.pathTruncated, pathRaw: ev.pathRaw },
      };
      break;
    case 'connect':
      msg.detail = { $case: 'connect', connect: sockToProto(ev, ev.ret) };
      break;
    case 'accept':
      msg.detail = { $case: 'accept', accept: sockToProto(ev, ev.ret) };
      break;
    case 'dns':
      msg.detail = {
        $case: 'dns',
        dns: {
          proto: transportToProto(ev.proto),
          family: ev.family,
          saddr: ev.saddr,
          sport: ev.sport,
          daddr: ev.daddr,
          dport: ev.dport,
          qr: ev.qr === 'Q' ? DnsDirection.DNS_DIRECTION_QUERY : DnsDirection.DNS_DIRECTION_RESPONSE,
          id: ev.id,
          name: ev.name,
          qtype: ev.qtype,
          rcode: ev.rcode,
          answers: ev.answers.map((a) => ({ type: a.type, data: a.data })),
          answersTruncated: ev.answersTruncated,
          latencyNs: ev.latencyNs,
        },
      };
      break;
    case 'drift':
      msg.detail = { $case: 'drift', drift: driftToProto(ev) };
      break;
    case 'alert':
      msg.detail = {
        $case: 'alert',
        alert: { action: ev.action, rules: ev.rules, event: toProto(ev.event), ancestry: ev.ancestry, containerMetadata: containerToProto(ev.containerMetadata) },
      };
      break;
    default:
      throw new TypeError(`not an event type: ${String((ev as { type: unknown }).type)}`);
  }
  return msg;
}

/**
 * The event a message carries, with its container's fields after the event's
 * own as withMetadata adds them; a TypeError when it carries none or an unknown enum value.
 */
export function fromProto(msg: EventMessage): AmberEvent {
  const ev = eventOf(msg);
  if (msg.runtime === undefined) return ev;
  const fields: ContainerFields = {
    runtime: msg.runtime,
    container: msg.containerName ?? '',
    image: msg.image ?? '',
    pod: msg.pod ?? '',
    namespace: msg.namespace ?? '',
  };
  return Object.assign(ev, fields);
}

function eventOf(msg: EventMessage): AmberEvent {
  const d = msg.detail;
  if (!d) throw new TypeError('event without a type (no detail set)');
  const { ts, pid, tid, ppid, uid, gid, comm, cgroupId, containerId, mntns, netns } = msg;
  switch (d.$case) {
    case 'exec': {
      const x = d.exec;
      const ev: ExecEvent = {
        type: 'exec', ts, pid, tid, ppid, uid, gid, comm, cgroupId, containerId, mntns, netns,
        filename: x.filename,
        exePath: x.exePath,
        args: x.args,
        argsTruncated: x.argsTruncated,
        upperLayer: x.upperLayer,
        fileless: x.fileless,
      } as ExecEvent;
      // absent, not undefined, where the event lacks them (recorded before they existed; bytes that were valid UTF-8)
      if (x.script !== undefined) ev.script = x.script;
      if (x.pathTruncated !== undefined) ev.pathTruncated = x.pathTruncated;
      if (x.filenameRaw !== undefined) ev.filenameRaw = x.filenameRaw;
      if (x.exePathRaw !== undefined) ev.exePathRaw = x.exePathRaw;
      if (x.argsRaw !== undefined) ev.argsRaw = x.argsRaw;
      if (x.scriptRaw !== undefined) ev.scriptRaw = x.scriptRaw;
      return ev;
    }
    case 'exit':
      return {
        type: 'exit', ts, pid, tid, ppid, uid, gid, comm, cgroupId, containerId, mntns, netns,
        exitCode: d.exit.exitCode,
        signal: d.exit.signal,
      };
    case 'fork':
      return { type: 'fork', ts, pid, tid, ppid, uid, gid, comm, cgroupId, containerId, mntns, netns, childPid: d.fork.childPid };
    case 'open': {
      const o = d.open;
      const ev: OpenEvent = {
        type: 'open', ts, pid, tid, ppid, uid, gid, comm, cgroupId, containerId, mntns, netns,
        path: o.path,
        flags: o.flags,
        flagNames: o.flagNames,
        mode: o.mode,
        ret: o.ret,
      } as OpenEvent;
      if (o.pathTruncated !== undefined) ev.pathTruncated = o.pathTruncated;
      if (o.pathRaw !== undefined) ev.pathRaw = o.pathRaw;
      return ev;
    }
    case 'connect':
      return { type: 'connect', ts, pid, tid, ppid, uid, gid, comm, cgroupId, containerId, mntns, netns, ...sockFromProto(d.connect) };
    case 'accept':
      return { type: 'accept', ts, pid, tid, ppid, uid, gid, comm, cgroupId, containerId, mntns, netns, ...sockFromProto(d.accept) };
    case 'dns': {
      const q = d.dns;
      const qr = q.qr === DnsDirection.DNS_DIRECTION_QUERY ? 'Q' : q.qr === DnsDirection.DNS_DIRECTION_RESPONSE ? 'R' : undefined;
      if (!qr) throw new TypeError(`dns event with an unknown direction ${q.qr}`);
      const ev: DnsEvent = {
        type: 'dns', ts, pid, tid, ppid, uid, gid, comm, cgroupId, containerId, mntns, netns,
        proto: transportFromProto(q.proto),
        family: familyFromProto(q.family),
        saddr: q.saddr,
        sport: q.sport,
        daddr: q.daddr,
        dport: q.dport,
        qr,
        id: q.id,
        name: q.name,
        qtype: q.qtype,
        rcode: q.rcode,
        answers: q.answers.map((a) => ({ type: a.type, data: a.data })),
      } as DnsEvent;
      if (q.answersTruncated !== undefined) ev.answersTruncated = q.answersTruncated;
      // absent, not undefined: the decoder sets it only on paired responses
      if (q.latencyNs !== undefined) ev.latencyNs = q.latencyNs;
      return ev;
    }
    case 'drift':
      return driftFromProto(d.drift, { type: 'drift', ts, pid, tid, ppid, uid, gid, comm, cgroupId, containerId, mntns, netns });
    case 'alert': {
      const a = d.alert;
      if (!a.event) throw new TypeError('alert without its event');
      return {
        type: 'alert', ts, pid, tid, ppid, uid, gid, comm, cgroupId, containerId, mntns, netns,
        action: oneOf(a.action, ACTIONS, 'alert action'),
        rules: a.rules,
        event: eventOf(a.event),
        ancestry: a.ancestry.map(processFromProto),
        containerMetadata: containerFromProto(a.containerMetadata),
      } as AlertEvent;
    }
    default:
      throw new TypeError('event with an unknown detail');
  }
}

// ---- findings ----

const ACTIONS: readonly Action[] = ['record', 'alert', 'incident'];
const DRIFT_REASONS: readonly DriftEvent['reason'][] = ['upper-layer', 'fileless', 'writable-mount'];
const DRIFT_SUBJECTS: readonly DriftEvent['subject'][] = ['executable', 'script'];
const DRIFT_CHANGES: readonly DriftEvent['change'][] = ['created', 'modified', 'fileless', 'unknown'];
const HASHED_FROM: readonly DriftEvent['hashedFrom'][] = ['exe', 'upperdir', 'script', ''];

function oneOf<T extends string>(value: string, allowed: readonly T[], what: string): T {
  if (!(allowed as readonly string[]).includes(value)) throw new TypeError(`unknown ${what} "${value}"`);
  return value as T;
}

function driftToProto(ev: DriftEvent): Drift {
  return {
    action: ev.action,
    rules: ev.rules,
    reason: ev.reason,
    subject: ev.subject,
    path: ev.path,
    change: ev.change,
    file: ev.file ?? undefined,
    mtimeSinceStartNs: ev.mtimeSinceStartNs ?? undefined,
    ctimeSinceStartNs: ev.ctimeSinceStartNs ?? undefined,
    imageFile: ev.imageFile ?? undefined,
    sha256: ev.sha256,
    hashedBytes: ev.hashedBytes,
    hashError: ev.hashError,
    hashedFrom: ev.hashedFrom,
    exec: ev.exec,
    ancestry: ev.ancestry,
    containerMetadata: containerToProto(ev.containerMetadata),
  };
}

/** Keys in the order the detector writes them, so JSON of a finding that crossed the API is the same bytes. */
function driftFromProto(m: Drift, common: CommonFields & { type: 'drift' }): DriftEvent {
  if (!m.exec) throw new TypeError('drift without its exec');
  const exec: DriftEvent['exec'] = { filename: m.exec.filename, exePath: m.exec.exePath, args: m.exec.args, script: m.exec.script as string };
  if (m.exec.script === undefined) delete (exec as Partial<DriftEvent['exec']>).script;
  return {
    ...common,
    action: oneOf(m.action, ACTIONS, 'drift action'),
    rules: m.rules,
    reason: oneOf(m.reason, DRIFT_REASONS, 'drift reason'),
    subject: oneOf(m.subject, DRIFT_SUBJECTS, 'drift subject'),
    path: m.path,
    change: oneOf(m.change, DRIFT_CHANGES, 'drift change'),
    file: fileFromProto(m.file),
    mtimeSinceStartNs: m.mtimeSinceStartNs ?? null,
    ctimeSinceStartNs: m.ctimeSinceStartNs ?? null,
    imageFile: fileFromProto(m.imageFile),
    sha256: m.sha256,
    hashedBytes: m.hashedBytes,
    hashError: m.hashError,
    hashedFrom: oneOf(m.hashedFrom, HASHED_FROM, 'drift hashedFrom'),
    exec,
    ancestry: m.ancestry.map(processFromProto),
    containerMetadata: containerFromProto(m.containerMetadata),
  };
}

function fileFromProto(f: FileFactsMessage | undefined): FileFacts | null {
  return f ? { size: f.size, mode: f.mode, mtime: f.mtime, ctime: f.ctime } : null;
}

function processFromProto(p: ProcessInfo): ProcessInfo {
  return { pid: p.pid, ppid: p.ppid, comm: p.comm, exePath: p.exePath, args: p.args };
}

function containerToProto(c: FindingContainer | null): ContainerMessage | undefined {
  if (!c) return undefined;
  return { runtime: c.runtime, name: c.name, image: c.image, imageId: c.imageId, startedAt: c.startedAt, pod: c.pod ?? undefined };
}

function containerFromProto(c: ContainerMessage | undefined): FindingContainer | null {
  if (!c) return null;
  const pod = c.pod ? { name: c.pod.name, namespace: c.pod.namespace, uid: c.pod.uid, labels: { ...c.pod.labels } } : null;
  return { runtime: c.runtime, name: c.name, image: c.image, imageId: c.imageId, startedAt: c.startedAt, pod };
}

function sockToProto(ev: SockFields, ret: number): Sock {
  return {
    proto: transportToProto(ev.proto),
    family: ev.family,
    saddr: ev.saddr,
    sport: ev.sport,
    daddr: ev.daddr,
    dport: ev.dport,
    ret,
  };
}

function sockFromProto(s: Sock): SockFields & { ret: number } {
  return {
    proto: transportFromProto(s.proto),
    family: familyFromProto(s.family),
    saddr: s.saddr,
    sport: s.sport,
    daddr: s.daddr,
    dport: s.dport,
    ret: s.ret,
  };
}

function transportToProto(p: Proto): Transport {
  return p === 'tcp' ? Transport.TRANSPORT_TCP : Transport.TRANSPORT_UDP;
}

function transportFromProto(t: Transport): Proto {
  if (t === Transport.TRANSPORT_TCP) return 'tcp';
  if (t === Transport.TRANSPORT_UDP) return 'udp';
  throw new TypeError(`unknown transport ${t}`);
}

function familyFromProto(f: number): 4 | 6 {
  if (f === 4 || f === 6) return f;
  throw new TypeError(`unknown address family ${f}`);
}

// ---- the filter ----

export function filterToProto(f: EventFilter): FilterMessage {
  return {
    since: f.since,
    until: f.until,
    types: f.types ? [...f.types] : [],
    container: f.container,
    scope: f.scope === 'host' ? Scope.SCOPE_HOST : f.scope === 'containers' ? Scope.SCOPE_CONTAINERS : Scope.SCOPE_ALL,
    pid: f.pid,
    comm: f.comm,
    match: f.match,
    pod: f.pod,
    namespace: f.namespace,
    image: f.image,
  };
}

/** The filter a request asks for; not validated here (validateFilter says what is wrong). */
export function filterFromProto(m: FilterMessage | undefined): EventFilter {
  const f: EventFilter = {};
  if (!m) return f;
  if (m.since !== undefined) f.since = m.since;
  if (m.until !== undefined) f.until = m.until;
  if (m.types.length > 0) f.types = m.types as EventType[];
  if (m.container !== undefined) f.container = m.container;
  if (m.scope !== Scope.SCOPE_ALL) {
    const scope: FilterScope | undefined = m.scope === Scope.SCOPE_HOST ? 'host' : m.scope === Scope.SCOPE_CONTAINERS ? 'containers' : undefined;
    if (!scope) throw new RangeError(`unknown scope ${m.scope}`);
    f.scope = scope;
  }
  if (m.pid !== undefined) f.pid = m.pid;
  if (m.comm !== undefined) f.comm = m.comm;
  if (m.match !== undefined) f.match = m.match;
  if (m.pod !== undefined) f.pod = m.pod;
  if (m.namespace !== undefined) f.namespace = m.namespace;
  if (m.image !== undefined) f.image = m.image;
  return f;
}
