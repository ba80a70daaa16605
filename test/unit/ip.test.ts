import net from 'node:net';
import { describe, expect, it } from 'vitest';
import { ipv4ToString, ipv6ToString } from '../../src/sensor/ip';

function v6(text: string): Uint8Array {
  // Node's own parser, via a SocketAddress round trip, gives the bytes to format back.
  const groups = new net.SocketAddress({ address: text, family: 'ipv6' }).address;
  const full = groups.includes('::') ? expand(groups) : groups.split(':');
  const out = new Uint8Array(16);
  full.forEach((g, i) => {
    const n = parseInt(g, 16);
    out[2 * i] = n >> 8;
    out[2 * i + 1] = n & 0xff;
  });
  return out;
}

function expand(text: string): string[] {
  const [head, tail] = text.split('::');
  const h = head ? head.split(':') : [];
  const t = tail ? tail.split(':') : [];
  return [...h, ...Array(8 - h.length - t.length).fill('0'), ...t];
}

describe('ip formatting', () => {
  it('formats IPv4', () => {
    expect(ipv4ToString(new Uint8Array([127, 0, 0, 1]), 0)).toBe('127.0.0.1');
    expect(ipv4ToString(new Uint8Array([9, 10, 1, 2, 3, 4]), 2)).toBe('1.2.3.4');
  });
  it.each([
    ['::1', '::1'],
    ['::', '::'],
    ['2001:db8::1', '2001:db8::1'],
    ['2001:db8:0:0:1:0:0:1', '2001:db8::1:0:0:1'],
    ['fe80::1:2:3:4', 'fe80::1:2:3:4'],
    ['2001:db8:1:2:3:4:5:6', '2001:db8:1:2:3:4:5:6'],
    ['2001:0:0:1:0:0:0:1', '2001:0:0:1::1'],
    ['2001:db8:0:1:1:1:1:1', '2001:db8:0:1:1:1:1:1'],
  ])('%s → %s (RFC 5952)', (input, expected) => {
    expect(ipv6ToString(v6(input), 0)).toBe(expected);
  });
  it('formats IPv4-mapped addresses with the dotted tail', () => {
    const b = new Uint8Array(16);
    b[10] = 0xff;
    b[11] = 0xff;
    b.set([10, 0, 0, 7], 12);
    expect(ipv6ToString(b, 0)).toBe('::ffff:10.0.0.7');
  });
});
