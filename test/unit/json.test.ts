/** The fast JSON lines of `-o json`: byte for byte what JSON.stringify writes, for every event shape and hostile content. */
import { describe, expect, it } from 'vitest';
import { eventJson, numberText } from '../../src/cli/json';
import type { AmberEvent } from '../../src/sensor/events';
import golden from '../fixtures/golden-v1/events.json';
import { dnsEvent, execEvent, oneOfEach, openEvent, T0 } from '../helpers/buffer-events';

/** xorshift32: the same cases on every run. */
function rng(seed: number): () => number {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return s / 4294967296;
  };
}

const HOSTILE = [
  '',
  'plain',
  'quote " backslash \\ slash /',
  'nl\ncr\rtab\tbs\bff\fnul\u0000esc\u001b[31m',
  'del\u007f c1\u0080\u009b\u009f',
  'rlo\u202egpj.exe lri\u2066 lrm\u200e alm\u061c',
  'ls\u2028ps\u2029',
  'emoji 😀 pair',
  'lone high \ud800 end',
  'lone low \udc00 end',
  'swapped \udc00\ud800',
  'ünïcode ä',
  '\ufffd replacement',
  'x'.repeat(5000),
];

function same(ev: unknown): void {
  expect(eventJson(ev as object)).toBe(JSON.stringify(ev));
}

describe('eventJson', () => {
  it('writes every event type exactly as JSON.stringify, including the golden segment events', () => {
    for (const ev of [...oneOfEach(T0), ...(golden as AmberEvent[])]) same(ev);
    const withLatency = dnsEvent(T0, { qr: 'R', rcode: 'NOERROR', answers: ['10.0.0.1'] });
    withLatency.latencyNs = 1234567;
    same(withLatency);
  });

  it('writes hostile strings in every string field exactly as JSON.stringify', () => {
    for (const s of HOSTILE) {
      same(execEvent(T0, { comm: s, filename: s, exePath: s, args: [s, s, ''], containerId: s }));
      same(openEvent(T0, { path: s, comm: s, flagNames: [s] }));
      same(dnsEvent(T0, { name: s, qtype: s, rcode: s, answers: [s, 'ok'] }));
    }
  });

  it('matches for random strings of every code unit', () => {
    const r = rng(42);
    for (let i = 0; i < 2000; i++) {
      let s = '';
      const len = Math.floor(r() * 12);
      for (let j = 0; j < len; j++) s += String.fromCharCode(r() < 0.5 ? Math.floor(r() * 0x100) : Math.floor(r() * 0x10000));
      same(openEvent(T0 + i, { path: s, comm: s }));
    }
  });

  it('matches for odd values and shapes: left-out keys, null, non-finite numbers, nested values, other key orders', () => {
    const base = openEvent(T0);
    same({ ...base, ret: NaN, mode: Infinity, flags: -0 });
    same({ ...base, type: undefined });
    same({ ...base, path: undefined, comm: null });
    same({ ...base, flagNames: [1, 'x'] });
    same({ ...base, flagNames: { a: 1 } });
    same({ ...base, extra: { nested: [1, { x: 'y' }] } });
    same({ ...base, fn: () => 1, sym: Symbol('s') });
    same({ ret: 1, ...base });
    same({ type: 'open', '1': 'integer key first', z: 'z' });
    same({ type: 'x'.repeat(100), a: 1 });
    same({ type: 7, ts: 'not a number', pid: '123\u001b' });
    same({ type: '__proto__', __proto__: null });
    const withProto = Object.create({ inherited: 1 }) as Record<string, unknown>;
    withProto.type = 'open';
    same(withProto);
    const toJson = { type: 'open', toJSON: () => 'replaced' };
    same(toJson);
    // a shape seen before, then the same type with another shape, then the first again
    same(base);
    same({ ...base, added: true });
    same(base);
  });

  it('throws as JSON.stringify does on a bigint', () => {
    expect(() => eventJson({ ...openEvent(T0), ts: 10n })).toThrow(TypeError);
  });

  it('writes timestamps (and every other number) as String() does', () => {
    const r = rng(7);
    const bad: number[] = [];
    const check = (n: number) => {
      if (numberText(n) !== String(n)) bad.push(n);
    };
    for (let i = 0; i < 1_000_000; i++) check(2 ** 60 + Math.floor(r() * 2 ** 52) * 256);
    for (let i = 0; i < 1_000_000; i++) check(1.7e18 + Math.floor(r() * 1e12) * 256);
    for (let s = 1.16e9; s < 2.3e9; s += 1e6) for (const d of [-256, 0, 256]) check(s * 1e9 + d);
    for (const n of [0, -0, 1, -1, 0.5, 1e21, 2 ** 60, 2 ** 61, 2 ** 61 - 256, 2 ** 60 - 1, -(2 ** 60), 4026531840, T0, 1e300, 5e-324]) check(n);
    expect(bad.slice(0, 5)).toEqual([]);
  });
});
