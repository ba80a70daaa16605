/**
 * The API's event mapping: every event type, through the protobuf bytes and
 * back, prints the same JSON line as the event did (keys in the decoder's
 * order), hostile strings included.
 */
import { readFileSync } from 'node:fs';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { filterFromProto, filterToProto, fromProto, toProto } from '../../src/api/event-codec';
import { Event, EventFilter as FilterMessage, TraceResponse } from '../../src/api/gen/amber';
import type { EventFilter } from '../../src/filter';
import { type AmberEvent, type DriftEvent, SENSOR_EVENT_TYPES } from '../../src/sensor/events';
import { ALERT, DRIFT } from '../helpers/findings';

/** Events as the decoder builds them (its key order), one or more of every type. */
const GOLDEN = JSON.parse(
  readFileSync(path.join(__dirname, '../fixtures/golden-v1/events.json'), 'utf8'),
) as AmberEvent[];

/**
 * Strings a watched workload controls. No lone surrogates: the decoder builds
 * strings with Buffer.toString('utf8'), which never yields one (it substitutes U+FFFD).
 */
const HOSTILE = [
  '',
  '\x00',
  '\x1b[31mred\x1b[0m\r\n',
  '"quoted" \\back\\slash',
  '\u202eevil\u202c',
  '\ufffd\ufffd',
  '💥 ünïcode ✓',
  '../../etc/passwd',
  'x'.repeat(4096),
  '\u0085\u2028\u2029',
];

function roundTrip(ev: AmberEvent): AmberEvent {
  const bytes = Event.encode(toProto(ev)).finish();
  return fromProto(Event.decode(bytes));
}

function withStrings(ev: AmberEvent, s: string): AmberEvent {
  const e = { ...ev, comm: s, containerId: s } as AmberEvent;
  switch (e.type) {
    case 'exec':
      return { ...e, filename: s, exePath: s, args: [s, s, ''], script: s, filenameRaw: s };
    case 'open':
      return { ...e, path: s, flagNames: [s], pathTruncated: true, pathRaw: s };
    case 'dns': {
      // in the decoder's key order: answersTruncated before latencyNs
      const { latencyNs, ...rest } = e;
      const answers = [{ type: s, data: s }, { type: 'TXT', data: s }];
      return { ...rest, name: s, qtype: s, rcode: s, answers, answersTruncated: true, ...(latencyNs === undefined ? {} : { latencyNs }) };
    }
    default:
      return e;
  }
}

describe('event ⇄ proto', () => {
  it('the golden events cover every type the sensor records', () => {
    expect(new Set(GOLDEN.map((e) => e.type))).toEqual(new Set(SENSOR_EVENT_TYPES));
  });

  it('every golden event prints the same JSON after the round trip', () => {
    for (const ev of GOLDEN) expect(JSON.stringify(roundTrip(ev))).toBe(JSON.stringify(ev));
  });

  it('hostile strings in every string field survive exactly', () => {
    let n = 0;
    for (const ev of GOLDEN) {
      for (const s of HOSTILE) {
        const hostile = withStrings(ev, s);
        expect(JSON.stringify(roundTrip(hostile))).toBe(JSON.stringify(hostile));
        n++;
      }
    }
    expect(n).toBe(GOLDEN.length * HOSTILE.length);
  });

  it('extreme numbers: negative returns, large ts, 64-bit cgroup ids, latency absent or present', () => {
    const base = GOLDEN.find((e) => e.type === 'dns')!;
    const cases: AmberEvent[] = [
      { ...base, ts: 2 ** 62 + 2 ** 11, cgroupId: Number.MAX_SAFE_INTEGER, pid: 2 ** 32 - 1, mntns: 2 ** 32 - 1 } as AmberEvent,
      { ...base, ts: 1714564800123456.5 } as AmberEvent,
      { ...base, latencyNs: 0 } as AmberEvent,
      { ...base, latencyNs: 5e9 } as AmberEvent,
    ];
    const open = GOLDEN.find((e) => e.type === 'open')!;
    cases.push({ ...open, ret: -13, flags: 2 ** 32 - 1, mode: 0o7777 } as AmberEvent);
    const exit = GOLDEN.find((e) => e.type === 'exit')!;
    cases.push({ ...exit, exitCode: -2147483648, signal: 2147483647 } as AmberEvent);
    for (const ev of cases) expect(JSON.stringify(roundTrip(ev))).toBe(JSON.stringify(ev));
    const { latencyNs: _, ...noLatency } = base as AmberEvent & { latencyNs?: number };
    expect('latencyNs' in roundTrip(noLatency as AmberEvent)).toBe(false);
  });

  it('a batch message carries the events in order', () => {
    const msg = TraceResponse.decode(TraceResponse.encode({ events: GOLDEN.map((e) => toProto(e)), dropped: 0 }).finish());
    expect(msg.events.map(fromProto)).toEqual(GOLDEN);
    expect(TraceResponse.decode(TraceResponse.encode({ events: [], dropped: 7 }).finish())).toEqual({ events: [], dropped: 7 });
  });

  it('drift and alert findings print the same JSON after the round trip, with and without their optional parts', () => {
    const podded: DriftEvent = {
      ...DRIFT,
      file: null,
      mtimeSinceStartNs: null,
      ctimeSinceStartNs: null,
      imageFile: { size: 1, mode: 0o100644, mtime: 1.5e18, ctime: 1.6e18 },
      hashError: 'exited before hashing',
      sha256: '',
      hashedFrom: '',
      exec: { filename: '/x', exePath: '/x', args: [] } as unknown as DriftEvent['exec'],
      containerMetadata: { ...DRIFT.containerMetadata!, pod: { name: 'web-1', namespace: 'shop', uid: 'u-1', labels: { app: 'web', 'a/b': '' } } },
    };
    const alertInDrift = { ...ALERT, containerMetadata: podded.containerMetadata, ancestry: DRIFT.ancestry };
    for (const ev of [DRIFT, ALERT, podded, alertInDrift]) expect(JSON.stringify(roundTrip(ev))).toBe(JSON.stringify(ev));
    for (const s of HOSTILE) {
      const ev: DriftEvent = { ...DRIFT, path: s, rules: [s], exec: { ...DRIFT.exec, args: [s], script: s }, ancestry: [{ ...DRIFT.ancestry[0], comm: s }] };
      expect(JSON.stringify(roundTrip(ev))).toBe(JSON.stringify(ev));
    }
  });

  it('a finding with an unknown reason, action or missing part is refused', () => {
    const drift = toProto(DRIFT);
    if (drift.detail?.$case !== 'drift') throw new Error('expected drift');
    const d = drift.detail.drift;
    expect(() => fromProto({ ...drift, detail: { $case: 'drift', drift: { ...d, reason: 'bogus' } } })).toThrow(/unknown drift reason "bogus"/);
    expect(() => fromProto({ ...drift, detail: { $case: 'drift', drift: { ...d, action: 'panic' } } })).toThrow(/unknown drift action "panic"/);
    expect(() => fromProto({ ...drift, detail: { $case: 'drift', drift: { ...d, exec: undefined } } })).toThrow(/drift without its exec/);
    const alert = toProto(ALERT);
    if (alert.detail?.$case !== 'alert') throw new Error('expected alert');
    expect(() => fromProto({ ...alert, detail: { $case: 'alert', alert: { ...alert.detail.alert, event: undefined } } })).toThrow(/alert without its event/);
  });

  it('a message without a type or with unknown enum values is refused, not guessed', () => {
    const exec = toProto(GOLDEN[0]);
    expect(() => fromProto({ ...exec, detail: undefined })).toThrow(/without a type/);
    const connect = toProto(GOLDEN.find((e) => e.type === 'connect')!);
    if (connect.detail?.$case !== 'connect') throw new Error('expected connect');
    expect(() => fromProto({ ...connect, detail: { $case: 'connect', connect: { ...connect.detail.connect, proto: 9 } } })).toThrow(/transport 9/);
    expect(() => fromProto({ ...connect, detail: { $case: 'connect', connect: { ...connect.detail.connect, family: 5 } } })).toThrow(/family 5/);
  });
});

describe('filter ⇄ proto', () => {
  it('every field round-trips', () => {
    const filters: EventFilter[] = [
      {},
      { since: 1714564800000000000, until: 1714564900000000000, types: ['exec', 'dns'], container: 'a1b2', pid: 42, comm: 'sh', match: '/etc' },
      { scope: 'host' },
      { scope: 'containers', types: ['open'] },
    ];
    for (const f of filters) {
      const back = filterFromProto(FilterMessage.decode(FilterMessage.encode(filterToProto(f)).finish()));
      expect(back).toEqual(f);
    }
  });

  it('an unknown scope is refused', () => {
    expect(() => filterFromProto({ ...filterToProto({}), scope: 7 })).toThrow(/unknown scope 7/);
  });
});

describe('container metadata on the wire', () => {
  const fields = { runtime: 'containerd', container: 'web', image: 'docker.io/library/nginx:1.27', pod: 'web-7f9', namespace: 'shop' };
  it('an event with its container joined crosses the API as JSON.stringify of withMetadata shows it', () => {
    for (const ev of GOLDEN as AmberEvent[]) {
      const back = fromProto(Event.decode(Event.encode(toProto(ev, fields)).finish()));
      expect(JSON.stringify(back)).toBe(JSON.stringify({ ...ev, ...fields }));
      // without the join: no container fields at all
      expect(JSON.stringify(fromProto(Event.decode(Event.encode(toProto(ev)).finish())))).toBe(JSON.stringify(ev));
    }
  });
  it('the pod, namespace and image filters cross the API', () => {
    const f: EventFilter = { pod: 'web-7f9', namespace: 'shop', image: 'nginx' };
    expect(filterFromProto(FilterMessage.decode(FilterMessage.encode(filterToProto(f)).finish()))).toEqual(f);
  });
});
