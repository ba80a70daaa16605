/**
 * Incidents on the wire (amber.proto's Incident messages) and back, and the
 * checks every incident request passes before it reaches the agent's
 * Incidents: each field bounded and of the one shape it may have.
 */
import * as grpc from '@grpc/grpc-js';
import { IncidentError, type IncidentErrorCode, type IncidentState, type IncidentSummary, type ResponseSummary, type TriggerRequest, type UploadSummary } from '../incident/incidents';
import type { TriggerKind } from '../incident/manifest';
import type { Incident, IncidentResponseAction, IncidentUpload, TriggerIncidentRequest } from './gen/amber';

/** Incident IDs as the agent makes them (time-ordered, file-name safe); anything else is refused before it names a file. */
export const INCIDENT_ID = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;
/** A container ID, or a unique prefix of it of at least 12 hex digits (as `docker ps` shows them). */
const CONTAINER_ID = /^[0-9a-f]{12,64}$/;
/** NAMESPACE/NAME: a DNS label and a DNS subdomain (Kubernetes' rules for them). */
const POD = /^([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)\/([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?)$/;
/** The kernel's PID_MAX_LIMIT: no pid is above it. */
export const MAX_PID = 4_194_304;
export const MAX_REASON_BYTES = 1024;
/** Archive bytes per PullIncident message. */
export const PULL_CHUNK_BYTES = 1 << 20;

/** The incident ID, or a RangeError saying what is wrong with it. */
export function checkIncidentId(id: string): string {
  if (id === '') throw new RangeError('id is required');
  if (!INCIDENT_ID.test(id)) throw new RangeError('id must be an incident ID: letters, digits, ".", "_" and "-", at most 128, not starting with a punctuation mark');
  return id;
}

/** The request as Incidents.trigger takes it, or a RangeError saying what is wrong. */
export function triggerRequestFromProto(req: TriggerIncidentRequest, requestedBy: string): TriggerRequest {
  const reason = req.reason;
  if (Buffer.byteLength(reason) > MAX_REASON_BYTES) throw new RangeError(`reason is at most ${MAX_REASON_BYTES} bytes (it is ${Buffer.byteLength(reason)})`);
  const target = req.target;
  const out: TriggerRequest = { reason, requestedBy };
  switch (target?.$case) {
    case 'container':
      if (!CONTAINER_ID.test(target.container)) throw new RangeError('container must be a container ID: 12 to 64 lowercase hex digits (a unique prefix will do)');
      out.container = target.container;
      return out;
    case 'pod':
      if ((target.pod.match(/\//g) ?? []).length !== 1) throw new RangeError('pod must be NAMESPACE/NAME (exactly one "/")');
      if (!POD.test(target.pod)) throw new RangeError('pod must be NAMESPACE/NAME: a namespace (DNS label) and a pod name (DNS subdomain)');
      out.pod = target.pod;
      return out;
    case 'pid':
      if (!Number.isInteger(target.pid) || target.pid < 1 || target.pid > MAX_PID) throw new RangeError(`pid must be a process ID, 1 to ${MAX_PID}`);
      out.pid = target.pid;
      return out;
    default:
      throw new RangeError('a target is required: container, pod or pid');
  }
}

const ERROR_STATUS: Record<IncidentErrorCode, grpc.status> = {
  invalid: grpc.status.INVALID_ARGUMENT,
  'not-found': grpc.status.NOT_FOUND,
  exhausted: grpc.status.RESOURCE_EXHAUSTED,
  unavailable: grpc.status.UNAVAILABLE,
};

/** The gRPC status an Incidents error is answered with; anything not an IncidentError is the agent's fault (INTERNAL). */
export function incidentErrorStatus(err: unknown): { code: grpc.status; details: string } {
  if (err instanceof IncidentError) return { code: ERROR_STATUS[err.code] ?? grpc.status.INTERNAL, details: err.message };
  return { code: grpc.status.INTERNAL, details: `the incident call failed: ${err instanceof Error ? err.message : String(err)}` };
}

export function incidentToProto(s: IncidentSummary): Incident {
  return {
    id: s.id,
    state: s.state,
    createdAt: s.createdAt,
    trigger: { kind: s.trigger.kind, rule: s.trigger.rule ?? '', reason: s.trigger.reason, requestedBy: s.trigger.requestedBy ?? '' },
    containerId: s.containerId,
    pod: s.pod,
    container: s.container,
    image: s.image,
    joined: s.joined,
    bytes: s.bytes,
    error: s.error,
    uploads: s.uploads.map((u) => ({ ...u })),
    responses: s.responses.map(responseToProto),
  };
}

export const responseToProto = (r: ResponseSummary): IncidentResponseAction => ({ kind: r.kind, state: r.state, at: r.at });
export const responseFromProto = (r: IncidentResponseAction): ResponseSummary => ({ kind: r.kind as ResponseSummary['kind'], state: r.state, at: r.at });

const uploadFromProto = (u: IncidentUpload): UploadSummary => ({
  sink: u.sink,
  state: u.state as UploadSummary['state'],
  attempts: u.attempts,
  lastError: u.lastError,
  remote: u.remote,
});

/** The summary as the agent's Incidents gave it (the trigger's event stays in the manifest). */
export function incidentFromProto(m: Incident): IncidentSummary {
  const t = m.trigger ?? { kind: '', rule: '', reason: '', requestedBy: '' };
  return {
    id: m.id,
    state: m.state as IncidentState,
    createdAt: m.createdAt,
    trigger: { kind: t.kind as TriggerKind, reason: t.reason, ...(t.rule ? { rule: t.rule } : {}), ...(t.requestedBy ? { requestedBy: t.requestedBy } : {}) },
    containerId: m.containerId,
    pod: m.pod,
    container: m.container,
    image: m.image,
    joined: m.joined,
    bytes: m.bytes,
    error: m.error,
    uploads: m.uploads.map(uploadFromProto),
    responses: m.responses.map(responseFromProto),
  };
}
