/**
 * The incident requests' checks (every field bounded, one shape each), the
 * IncidentError codes as gRPC statuses, and an incident through the wire
 * encoding and back.
 */
import * as grpc from '@grpc/grpc-js';
import { describe, expect, it } from 'vitest';
import { Incident, TriggerIncidentRequest } from '../../src/api/gen/amber';
import { checkIncidentId, incidentErrorStatus, incidentFromProto, incidentToProto, triggerRequestFromProto } from '../../src/api/incident-codec';
import { IncidentError, type IncidentSummary } from '../../src/incident/incidents';

/** The request as the server decodes it from the wire. */
const wire = (req: TriggerIncidentRequest) => TriggerIncidentRequest.decode(TriggerIncidentRequest.encode(req).finish());
const refusal = (req: TriggerIncidentRequest) => {
  try {
    triggerRequestFromProto(wire(req), 'unix');
    return 'accepted';
  } catch (e) {
    return `${(e as Error).name}: ${(e as Error).message}`;
  }
};

describe('TriggerIncident requests', () => {
  it('take exactly one well-formed target, and who asked', () => {
    expect(triggerRequestFromProto(wire({ target: { $case: 'container', container: 'a1b2c3d4e5f6' }, reason: 'why' }), 'client-one')).toEqual({
      container: 'a1b2c3d4e5f6',
      reason: 'why',
      requestedBy: 'client-one',
    });
    expect(triggerRequestFromProto(wire({ target: { $case: 'pod', pod: 'shop/web-7f9.x' }, reason: '' }), 'unix')).toEqual({ pod: 'shop/web-7f9.x', reason: '', requestedBy: 'unix' });
    expect(triggerRequestFromProto(wire({ target: { $case: 'pid', pid: 4194304 }, reason: 'r'.repeat(1024) }), 'unix')).toMatchObject({ pid: 4194304 });
  });

  it('refuse what is malformed, saying what', () => {
    const container = (c: string) => refusal({ target: { $case: 'container', container: c }, reason: '' });
    const containerError = 'RangeError: container must be a container ID: 12 to 64 lowercase hex digits (a unique prefix will do)';
    for (const c of ['', 'a1b2c3d4e5f', 'A1B2C3D4E5F6', '../../etc/passwd', 'a'.repeat(65), 'a1b2c3d4e5f6\n']) expect(container(c), c).toBe(containerError);
    const pod = (p: string) => refusal({ target: { $case: 'pod', pod: p }, reason: '' });
    expect(pod('web')).toBe('RangeError: pod must be NAMESPACE/NAME (exactly one "/")');
    expect(pod('a/b/c')).toBe('RangeError: pod must be NAMESPACE/NAME (exactly one "/")');
    for (const p of ['/web', 'shop/', 'Shop/web', 'shop/..x', 'shop/web-', `${'a'.repeat(64)}/web`, `shop/${'a'.repeat(254)}`]) {
      expect(pod(p), p).toBe('RangeError: pod must be NAMESPACE/NAME: a namespace (DNS label) and a pod name (DNS subdomain)');
    }
    expect(refusal({ target: { $case: 'pid', pid: 0 }, reason: '' })).toBe('RangeError: pid must be a process ID, 1 to 4194304');
    expect(refusal({ target: { $case: 'pid', pid: 4194305 }, reason: '' })).toBe('RangeError: pid must be a process ID, 1 to 4194304');
    expect(refusal({ target: undefined, reason: 'x' })).toBe('RangeError: a target is required: container, pod or pid');
    // bytes, not characters: 512 two-byte characters fit, one more does not
    expect(refusal({ target: { $case: 'pid', pid: 1 }, reason: 'é'.repeat(512) })).toBe('accepted');
    expect(refusal({ target: { $case: 'pid', pid: 1 }, reason: 'é'.repeat(512) + 'x' })).toBe('RangeError: reason is at most 1024 bytes (it is 1025)');
  });

  it('incident IDs are file-name safe', () => {
    expect(checkIncidentId('20240501T120005Z-a1b2c3')).toBe('20240501T120005Z-a1b2c3');
    for (const id of ['', '.', '..', '../x', 'a/b', '-rf', `a${'b'.repeat(128)}`, 'a\u0000', 'é']) expect(() => checkIncidentId(id), id).toThrow(RangeError);
  });
});

describe('incident errors and summaries on the wire', () => {
  it('IncidentError codes are gRPC statuses with the message; anything else is INTERNAL', () => {
    expect(incidentErrorStatus(new IncidentError('invalid', 'bad'))).toEqual({ code: grpc.status.INVALID_ARGUMENT, details: 'bad' });
    expect(incidentErrorStatus(new IncidentError('not-found', 'no incident x'))).toEqual({ code: grpc.status.NOT_FOUND, details: 'no incident x' });
    expect(incidentErrorStatus(new IncidentError('exhausted', 'full'))).toEqual({ code: grpc.status.RESOURCE_EXHAUSTED, details: 'full' });
    expect(incidentErrorStatus(new IncidentError('unavailable', 'stopping'))).toEqual({ code: grpc.status.UNAVAILABLE, details: 'stopping' });
    expect(incidentErrorStatus(new Error('EIO'))).toEqual({ code: grpc.status.INTERNAL, details: 'the incident call failed: EIO' });
  });

  it('a summary comes back as it went (the trigger event stays in the manifest)', () => {
    const summary: IncidentSummary = {
      id: '20240501T120005Z-a1b2c3',
      state: 'complete',
      createdAt: '2024-05-01T12:00:05.000Z',
      trigger: { kind: 'rule', rule: 'shell-in-container', reason: 'rule shell-in-container: exec', requestedBy: 'client-one' },
      containerId: 'a1b2c3d4e5f6'.repeat(5).slice(0, 64),
      pod: 'shop/web-7f9',
      container: 'web',
      image: 'docker.io/library/nginx:1.25',
      joined: 3,
      bytes: 2 ** 40 + 7,
      error: '',
      uploads: [{ sink: 's3', state: 'uploaded', attempts: 2, lastError: 'timeout', remote: 's3://b/k' }],
      responses: [{ kind: 'cut-network', state: 'in force', at: '2024-05-01T12:00:06.000Z' }],
    };
    const back = incidentFromProto(Incident.decode(Incident.encode(incidentToProto(summary)).finish()));
    expect(back).toEqual(summary);
  });
});
