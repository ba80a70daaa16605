import net from 'node:net';
import { describe, expect, it } from 'vitest';
import { DnsTracker, parseDnsMessage } from '../../src/sensor/dns';
import type { DnsEvent } from '../../src/sensor/events';

// ---- a small DNS wire encoder (RFC 1035) ----

const T = { A: 1, NS: 2, CNAME: 5, SOA: 6, PTR: 12, MX: 15, TXT: 16, AAAA: 28, SRV: 33, OPT: 41, HTTPS: 65, ANY: 255 };

/** A name as labels, or raw bytes when the test wants pointers or malformed names. */
type WireName = string | number[];

function name(n: WireName): number[] {
  if (Array.isArray(n)) return n;
  const out: number[] = [];
  for (const label of n.split('.').filter(Boolean)) out.push(label.length, ...Buffer.from(label, 'latin1'));
  out.push(0);
  return out;
}

const ptr = (offset: number): number[] => [0xc0 | (offset >> 8), offset & 0xff];
const u16 = (v: number): number[] => [v >> 8, v & 0xff];
const u16At = (b: Uint8Array, off: number): number => (off + 2 <= b.length ? (b[off] << 8) | b[off + 1] : 0);
const u32 = (v: number): number[] => [v >>> 24, (v >> 16) & 0xff, (v >> 8) & 0xff, v & 0xff];
const ipv4 = (s: string): number[] => s.split('.').map(Number);

function ipv6(s: string): number[] {
  const [head, tail] = s.split('::');
  const groups = (x: string | undefined) => (x ? x.split(':').map((g) => parseInt(g, 16)) : []);
  const h = groups(head);
  const t = groups(tail);
  const all = tail === undefined ? h : [...h, ...Array(8 - h.length - t.length).fill(0), ...t];
  return all.flatMap(u16);
}

interface Rr {
  name: WireName;
  type: number;
  cls?: number;
  ttl?: number;
  rdata: number[];
  /** Overrides RDLENGTH, to lie about it. */
  rdlength?: number;
}

interface Msg {
  id: number;
  flags: number;
  questions?: Array<{ name: WireName; type: number }>;
  answers?: Rr[];
  authority?: Rr[];
  additional?: Rr[];
  /** Overrides the header counts. */
  counts?: [number, number, number, number];
}

/** The message bytes and the offset just after each answer record. */
function encode(m: Msg): { bytes: Uint8Array; answerEnds: number[]; questionEnd: number } {
  const qs = m.questions ?? [];
  const an = m.answers ?? [];
  const ns = m.authority ?? [];
  const ar = m.additional ?? [];
  const counts = m.counts ?? [qs.length, an.length, ns.length, ar.length];
  const out: number[] = [...u16(m.id), ...u16(m.flags), ...counts.flatMap(u16)];
  for (const q of qs) out.push(...name(q.name), ...u16(q.type), ...u16(1));
  const questionEnd = out.length;
  const answerEnds: number[] = [];
  const rr = (r: Rr) =>
    out.push(...name(r.name), ...u16(r.type), ...u16(r.cls ?? 1), ...u32(r.ttl ?? 60), ...u16(r.rdlength ?? r.rdata.length), ...r.rdata);
  for (const r of an) {
    rr(r);
    answerEnds.push(out.length);
  }
  ns.forEach(rr);
  ar.forEach(rr);
  return { bytes: Uint8Array.from(out), answerEnds, questionEnd };
}

function tcpFramed(bytes: Uint8Array, declared = bytes.length): Uint8Array {
  return Uint8Array.from([...u16(declared), ...bytes]);
}

const QUERY = 0x0100; // RD
const RESPONSE = 0x8180; // QR, RD, RA

// A response as a recursive resolver sends it: the name compressed everywhere after the question.
const Q_NAME = 'amber-test.example';
const CNAME_TARGET_OFFSET = 12 + name(Q_NAME).length + 4 + 12; // after the question and the CNAME's fixed part
const realResponse = encode({
  id: 0xbeef,
  flags: RESPONSE,
  questions: [{ name: Q_NAME, type: T.A }],
  answers: [
    { name: ptr(12), type: T.CNAME, rdata: name('edge.cdn.example') },
    { name: ptr(CNAME_TARGET_OFFSET), type: T.A, rdata: ipv4('10.1.2.3') },
    { name: ptr(CNAME_TARGET_OFFSET), type: T.AAAA, rdata: ipv6('2001:db8::1') },
    { name: ptr(CNAME_TARGET_OFFSET), type: T.MX, rdata: [...u16(10), ...ptr(12)] },
    { name: ptr(CNAME_TARGET_OFFSET), type: T.A, rdata: ipv4('192.0.2.200') },
  ],
  additional: [{ name: [0], type: T.OPT, cls: 1232, ttl: 0, rdata: [] }],
});
const ans = (type: string, data: string) => ({ type, data });
const A = (data: string) => ans('A', data);
const REAL_ANSWERS = [
  ans('CNAME', 'edge.cdn.example'),
  A('10.1.2.3'),
  ans('AAAA', '2001:db8::1'),
  ans('MX', `10 ${Q_NAME}`),
  A('192.0.2.200'),
];

describe('parseDnsMessage', () => {
  it('parses a query', () => {
    const { bytes } = encode({ id: 0x1234, flags: QUERY, questions: [{ name: Q_NAME, type: T.A }] });
    expect(parseDnsMessage(bytes, false)).toEqual({ id: 0x1234, qr: 'Q', name: Q_NAME, qtype: 'A', rcode: '', answers: [], answersTruncated: false });
  });

  it('keeps the case of the name as sent (0x20 randomisation)', () => {
    const { bytes } = encode({ id: 1, flags: QUERY, questions: [{ name: 'AmBeR-TeSt.Example', type: T.AAAA }] });
    expect(parseDnsMessage(bytes, false)).toMatchObject({ name: 'AmBeR-TeSt.Example', qtype: 'AAAA' });
  });

  it('parses a response with CNAME, A, AAAA and MX answers, each with its type', () => {
    expect(realResponse.bytes[CNAME_TARGET_OFFSET]).toBe(4); // "edge" really is where the pointers go
    expect(parseDnsMessage(realResponse.bytes, false)).toEqual({
      id: 0xbeef,
      qr: 'R',
      name: Q_NAME,
      qtype: 'A',
      rcode: 'NOERROR',
      answers: REAL_ANSWERS,
      answersTruncated: false,
    });
  });

  it('parses NXDOMAIN and other rcodes', () => {
    const nx = encode({ id: 7, flags: 0x8183, questions: [{ name: 'nope.example', type: T.A }] });
    expect(parseDnsMessage(nx.bytes, false)).toEqual({ id: 7, qr: 'R', name: 'nope.example', qtype: 'A', rcode: 'NXDOMAIN', answers: [], answersTruncated: false });
    const rcodeOf = (flags: number) => parseDnsMessage(encode({ id: 7, flags, questions: [{ name: 'x', type: T.A }] }).bytes, false)?.rcode;
    expect(rcodeOf(0x8182)).toBe('SERVFAIL');
    expect(rcodeOf(0x8185)).toBe('REFUSED');
    expect(rcodeOf(0x8186)).toBe('YXDOMAIN');
    expect(rcodeOf(0x818c)).toBe('RCODE12');
  });

  it('reads the extended rcode from the EDNS OPT record', () => {
    const withOpt = (flags: number, extRcode: number) =>
      encode({
        id: 9,
        flags,
        questions: [{ name: 'x.example', type: T.A }],
        authority: [{ name: ptr(12), type: T.SOA, rdata: [...ptr(12), ...ptr(12), ...u32(1), ...u32(2), ...u32(3), ...u32(4), ...u32(5)] }],
        additional: [{ name: [0], type: T.OPT, cls: 1232, ttl: extRcode << 24, rdata: [] }],
      }).bytes;
    expect(parseDnsMessage(withOpt(0x8180, 1), false)?.rcode).toBe('BADVERS');
    expect(parseDnsMessage(withOpt(0x8187, 1), false)?.rcode).toBe('BADCOOKIE');
    expect(parseDnsMessage(withOpt(0x8183, 0), false)?.rcode).toBe('NXDOMAIN');
    expect(parseDnsMessage(withOpt(0x8180, 2), false)?.rcode).toBe('RCODE32');
  });

  it('names query types, with TYPE<n> for unknown ones', () => {
    const qtypeOf = (type: number) => parseDnsMessage(encode({ id: 1, flags: QUERY, questions: [{ name: 'x', type }] }).bytes, false)?.qtype;
    expect([1, 2, 5, 6, 12, 15, 16, 28, 33, 64, 65, 255, 257].map(qtypeOf)).toEqual([
      'A', 'NS', 'CNAME', 'SOA', 'PTR', 'MX', 'TXT', 'AAAA', 'SRV', 'SVCB', 'HTTPS', 'ANY', 'CAA',
    ]);
    expect(qtypeOf(999)).toBe('TYPE999');
    expect(qtypeOf(0)).toBe('TYPE0');
  });

  it('follows compression pointers into the middle of names', () => {
    // question "api.example.com": "example.com" starts at 12 + 4
    const { bytes } = encode({
      id: 2,
      flags: RESPONSE,
      questions: [{ name: 'api.example.com', type: T.PTR }],
      answers: [
        { name: ptr(12), type: T.CNAME, rdata: [2, ...Buffer.from('lb'), ...ptr(16)] },
        { name: ptr(12), type: T.PTR, rdata: [3, ...Buffer.from('www'), 4, ...Buffer.from('test'), ...ptr(24)] }, // ptr(24) -> "com"
        { name: ptr(16), type: T.NS, rdata: ptr(16) },
      ],
    });
    expect(parseDnsMessage(bytes, false)).toMatchObject({ qtype: 'PTR', answers: [ans('CNAME', 'lb.example.com'), ans('PTR', 'www.test.com'), ans('NS', 'example.com')] });
  });

  it('formats AAAA answers in compressed form', () => {
    const aaaa = ['::1', '::', '2001:db8::1', '2001:db8:0:1::1', '1:0:0:2::3', 'fe80::1:0:0:1', '2001:db8:1:2:3:4:5:6', '::ffff:10.0.0.1'];
    const { bytes } = encode({
      id: 3,
      flags: RESPONSE,
      questions: [{ name: 'v6.example', type: T.AAAA }],
      answers: aaaa.map((a) => ({ name: ptr(12), type: T.AAAA, rdata: ipv6(a === '::ffff:10.0.0.1' ? '::ffff:a00:1' : a) })),
    });
    expect(parseDnsMessage(bytes, false)?.answers).toEqual(aaaa.map((a) => ans('AAAA', a)));
  });

  it('prints AAAA answers as node:net does', () => {
    let seed = 42;
    const rand = () => (seed = (seed * 1103515245 + 12345) & 0x7fffffff);
    for (let i = 0; i < 500; i++) {
      // mostly zero groups, so runs of zeros of every length and position occur
      const groups = Array.from({ length: 8 }, () => (rand() % 3 === 0 ? rand() & 0xffff : 0));
      // net prints ::a.b.c.d (deprecated IPv4-compatible) in mixed notation; not a real AAAA answer
      if (groups.slice(0, 6).every((g) => g === 0) && !(groups[6] === 0 && groups[7] <= 1)) continue;
      const text = groups.map((g) => g.toString(16)).join(':');
      const { bytes } = encode({ id: 4, flags: RESPONSE, questions: [{ name: 'x', type: T.AAAA }], answers: [{ name: ptr(12), type: T.AAAA, rdata: groups.flatMap(u16) }] });
      expect(parseDnsMessage(bytes, false)?.answers).toEqual([ans('AAAA', new net.SocketAddress({ address: text, family: 'ipv6' }).address)]);
    }
  });

  it('escapes label bytes that are not printable or would fake a dot', () => {
    const { bytes } = encode({ id: 5, flags: QUERY, questions: [{ name: [5, 0x61, 0x2e, 0x62, 0x20, 0x5c, 2, 0x00, 0xff, 0], type: T.A }] });
    expect(parseDnsMessage(bytes, false)?.name).toBe('a\\.b\\032\\\\.\\000\\255');
  });

  it('names the root "."', () => {
    const { bytes } = encode({ id: 6, flags: QUERY, questions: [{ name: [0], type: T.NS }] });
    expect(parseDnsMessage(bytes, false)).toMatchObject({ name: '.', qtype: 'NS' });
  });

  it('reads the TCP length prefix', () => {
    expect(parseDnsMessage(tcpFramed(realResponse.bytes), true)).toEqual(parseDnsMessage(realResponse.bytes, false));
    const query = encode({ id: 0x4242, flags: QUERY, questions: [{ name: Q_NAME, type: T.AAAA }] }).bytes;
    expect(parseDnsMessage(tcpFramed(query), true)).toEqual({ id: 0x4242, qr: 'Q', name: Q_NAME, qtype: 'AAAA', rcode: '', answers: [], answersTruncated: false });
    // Without the prefix skipped, the bytes are misread: the flag matters.
    expect(parseDnsMessage(tcpFramed(query), false)).not.toEqual(parseDnsMessage(tcpFramed(query), true));
  });

  it('reads only the first of two TCP messages in one segment', () => {
    const second = encode({ id: 2, flags: QUERY, questions: [{ name: 'second.example', type: T.A }] }).bytes;
    const both = Uint8Array.from([...tcpFramed(realResponse.bytes), ...tcpFramed(second)]);
    expect(parseDnsMessage(both, true)?.answers).toEqual(REAL_ANSWERS);
  });

  it('rejects what is not a DNS message', () => {
    expect(parseDnsMessage(new Uint8Array(0), false)).toBeNull();
    expect(parseDnsMessage(new Uint8Array(11), false)).toBeNull();
    expect(parseDnsMessage(new Uint8Array(0), true)).toBeNull();
    expect(parseDnsMessage(Uint8Array.from([0, 0x20]), true)).toBeNull(); // a bare TCP length prefix
    expect(parseDnsMessage(tcpFramed(new Uint8Array(12), 11), true)).toBeNull(); // declared length below a header
    // zero questions
    expect(parseDnsMessage(encode({ id: 1, flags: RESPONSE, answers: [{ name: [0], type: T.A, rdata: ipv4('1.2.3.4') }] }).bytes, false)).toBeNull();
    // unassigned opcode 3
    expect(parseDnsMessage(encode({ id: 1, flags: 0x1800, questions: [{ name: 'x', type: T.A }] }).bytes, false)).toBeNull();
    // question without its type
    expect(parseDnsMessage(Uint8Array.from([0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 0x78, 0, 0]), false)).toBeNull();
    // label types 0x40 and 0x80
    expect(parseDnsMessage(encode({ id: 1, flags: QUERY, questions: [{ name: [0x41, 0], type: T.A }] }).bytes, false)).toBeNull();
    expect(parseDnsMessage(encode({ id: 1, flags: QUERY, questions: [{ name: [0x81, 0], type: T.A }] }).bytes, false)).toBeNull();
    // a name longer than 255 octets
    const long = Array.from({ length: 5 }, () => 'a'.repeat(60)).join('.');
    expect(parseDnsMessage(encode({ id: 1, flags: QUERY, questions: [{ name: long, type: T.A }] }).bytes, false)).toBeNull();
    const longest = Array.from({ length: 4 }, () => 'a'.repeat(62)).join('.'); // 4 * 63 + 1 = 253 octets
    expect(parseDnsMessage(encode({ id: 1, flags: QUERY, questions: [{ name: longest, type: T.A }] }).bytes, false)?.name).toBe(longest);
  });

  it('parses a message cut at every length without throwing, keeping the complete answers', () => {
    const full = realResponse.bytes;
    const [cnameEnd, aEnd, aaaaEnd, mxEnd, a2End] = realResponse.answerEnds;
    const expectedAnswers = (cut: number) =>
      [cut >= cnameEnd, cut >= aEnd, cut >= aaaaEnd, cut >= mxEnd, cut >= a2End].flatMap((ok, i) => (ok ? [REAL_ANSWERS[i]] : []));
    expect(mxEnd).toBeLessThan(a2End);
    for (let cut = 0; cut <= full.length; cut++) {
      const udp = parseDnsMessage(full.subarray(0, cut), false);
      const tcp = parseDnsMessage(tcpFramed(full).subarray(0, cut + 2), true);
      expect(tcp).toEqual(udp);
      if (cut < realResponse.questionEnd - 2) {
        expect(udp, `cut ${cut}`).toBeNull();
      } else {
        expect(udp, `cut ${cut}`).toEqual({ id: 0xbeef, qr: 'R', name: Q_NAME, qtype: 'A', rcode: 'NOERROR', answers: expectedAnswers(cut), answersTruncated: cut < a2End });
      }
    }
  });

  it('survives pointer loops', () => {
    const header = [0, 1, 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0];
    // a pointer to itself
    expect(parseDnsMessage(Uint8Array.from([...header, 0xc0, 12, 0, 1, 0, 1]), false)).toBeNull();
    // two pointers to each other
    expect(parseDnsMessage(Uint8Array.from([...header, 0xc0, 14, 0xc0, 12, 0, 1, 0, 1]), false)).toBeNull();
    // a label then a pointer back to it: grows until the 255-octet limit
    expect(parseDnsMessage(Uint8Array.from([...header, 1, 0x61, 0xc0, 12, 0, 1, 0, 1]), false)).toBeNull();
    // a pointer past the end
    expect(parseDnsMessage(Uint8Array.from([...header, 0xff, 0xff, 0, 1, 0, 1]), false)).toBeNull();
    // a looping CNAME target loses that answer only
    const { bytes } = encode({
      id: 1,
      flags: RESPONSE,
      questions: [{ name: 'loop.example', type: T.A }],
      answers: [
        { name: ptr(12), type: T.A, rdata: ipv4('10.0.0.1') },
        { name: ptr(12), type: T.CNAME, rdata: ptr(12 + 14 + 4 + 16 + 12) }, // points at itself
        { name: ptr(12), type: T.A, rdata: ipv4('10.0.0.2') },
      ],
    });
    expect(parseDnsMessage(bytes, false)).toMatchObject({ answers: [A('10.0.0.1'), A('10.0.0.2')], answersTruncated: false });
  });

  it('follows at most 16 pointers in a name', () => {
    const msg = (jumps: number) => {
      // header, question = pointer to the chain's last link, qtype/qclass, then "x" and the chain
      const header = [0, 1, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
      const body = [1, 0x78, 0]; // "x" at offset 12 + 6
      const base = 12 + 6;
      const links: number[] = [];
      let target = base;
      for (let i = 1; i < jumps; i++) {
        links.push(...ptr(target));
        target = base + 3 + links.length - 2;
      }
      return Uint8Array.from([...header, ...ptr(target), 0, 1, 0, 1, ...body, ...links]);
    };
    expect(parseDnsMessage(msg(1), false)?.name).toBe('x');
    expect(parseDnsMessage(msg(16), false)?.name).toBe('x');
    expect(parseDnsMessage(msg(17), false)).toBeNull();
  });

  it('stops at lengths that run past the end, keeping what came before', () => {
    const { bytes } = encode({
      id: 1,
      flags: RESPONSE,
      questions: [{ name: 'x.example', type: T.A }],
      answers: [
        { name: ptr(12), type: T.A, rdata: ipv4('10.0.0.1') },
        { name: ptr(12), type: T.A, rdata: ipv4('10.0.0.2'), rdlength: 0xffff },
        { name: ptr(12), type: T.A, rdata: ipv4('10.0.0.3') },
      ],
      counts: [1, 60000, 60000, 60000],
    });
    expect(parseDnsMessage(bytes, false)).toMatchObject({ rcode: 'NOERROR', answers: [A('10.0.0.1')], answersTruncated: true });
    // A and AAAA with the wrong length are not addresses
    const wrong = encode({
      id: 1,
      flags: RESPONSE,
      questions: [{ name: 'x.example', type: T.A }],
      answers: [
        { name: ptr(12), type: T.A, rdata: [10, 0, 0] },
        { name: ptr(12), type: T.AAAA, rdata: ipv4('10.0.0.2') },
        { name: ptr(12), type: T.A, rdata: ipv4('10.0.0.3') },
      ],
    });
    expect(parseDnsMessage(wrong.bytes, false)).toMatchObject({ answers: [A('10.0.0.3')], answersTruncated: false });
  });

  it('decodes TXT, SRV, MX, NS and PTR data, and any other type in the RFC 3597 form', () => {
    const txt = (...strings: number[][]) => strings.flatMap((b) => [b.length, ...b]);
    const bytes = (t: string) => [...Buffer.from(t, 'latin1')];
    const { bytes: msg } = encode({
      id: 9,
      flags: RESPONSE,
      questions: [{ name: 'x.example', type: T.TXT }],
      answers: [
        { name: ptr(12), type: T.TXT, rdata: txt(bytes('v=spf1 -all')) },
        // a tunnel's payload: several strings, quotes, a backslash, control and high bytes
        { name: ptr(12), type: T.TXT, rdata: txt(bytes('a"b\\c'), [0x00, 0x1b, 0x7f, 0xff], []) },
        { name: ptr(12), type: T.SRV, rdata: [...u16(10), ...u16(60), ...u16(5060), ...name('sip.example')] },
        { name: ptr(12), type: T.MX, rdata: [...u16(0), 0] },
        { name: ptr(12), type: 99, rdata: [0xde, 0xad] }, // SPF: not decoded, kept as bytes
        { name: ptr(12), type: 1234, rdata: [] },
      ],
    });
    expect(parseDnsMessage(msg, false)).toMatchObject({
      qtype: 'TXT',
      answersTruncated: false,
      answers: [
        ans('TXT', '"v=spf1 -all"'),
        ans('TXT', '"a\\"b\\\\c" "\\000\\027\\127\\255" ""'),
        ans('SRV', '10 60 5060 sip.example'),
        ans('MX', '0 .'),
        ans('SPF', '\\# 2 dead'),
        ans('TYPE1234', '\\# 0'),
      ],
    });
    // a TXT string running past its RDLENGTH is no data; the next record is still read
    const bad = encode({
      id: 9,
      flags: RESPONSE,
      questions: [{ name: 'x.example', type: T.TXT }],
      answers: [
        { name: ptr(12), type: T.TXT, rdata: [5, 0x61] },
        { name: ptr(12), type: T.A, rdata: ipv4('10.0.0.9') },
      ],
    });
    expect(parseDnsMessage(bad.bytes, false)).toMatchObject({ answers: [A('10.0.0.9')], answersTruncated: false });
  });

  it('flags an answer list cut at the capture limit (512 bytes)', () => {
    const chunk = [...Buffer.from('x'.repeat(200))];
    const { bytes } = encode({
      id: 10,
      flags: RESPONSE,
      questions: [{ name: 'exfil.example', type: T.TXT }],
      answers: [0, 1, 2].map(() => ({ name: ptr(12), type: T.TXT, rdata: [chunk.length, ...chunk] })),
    });
    expect(bytes.length).toBeGreaterThan(512);
    const cut = parseDnsMessage(bytes.subarray(0, 512), false);
    expect(cut?.answers).toHaveLength(2);
    expect(cut?.answersTruncated).toBe(true);
    expect(parseDnsMessage(bytes, false)).toMatchObject({ answersTruncated: false });
  });

  it('does not read a name past its RDLENGTH', () => {
    const { bytes } = encode({
      id: 1,
      flags: RESPONSE,
      questions: [{ name: 'x.example', type: T.CNAME }],
      answers: [{ name: ptr(12), type: T.CNAME, rdata: name('y.example'), rdlength: 2 }],
    });
    expect(parseDnsMessage(bytes, false)?.answers).toEqual([]);
  });

  it('does not misread the bytes of a cut record as the records after it', () => {
    // Read from the wrong offset, this record's type and class would look like an OPT with BADVERS.
    const { bytes } = encode({
      id: 1,
      flags: RESPONSE,
      questions: [{ name: 'x.example', type: T.A }],
      answers: [{ name: ptr(12), type: 0, cls: 0x2900, ttl: 0x00010000, rdata: [0, 0], rdlength: 0xffff }],
      counts: [1, 1, 0, 1],
    });
    expect(parseDnsMessage(bytes, false)).toMatchObject({ rcode: 'NOERROR', answers: [], answersTruncated: true });
  });

  it('never throws on random or mutated bytes', () => {
    let seed = 7;
    const rand = () => (seed = (seed * 1103515245 + 12345) & 0x7fffffff) >> 8;
    const base = tcpFramed(realResponse.bytes);
    for (let i = 0; i < 20_000; i++) {
      let buf: Uint8Array;
      if (i % 2 === 0) {
        buf = Uint8Array.from({ length: rand() % 600 }, () => rand() & 0xff);
      } else {
        buf = base.slice(0, rand() % (base.length + 1));
        for (let k = 0, n = 1 + (rand() % 6); k < n && buf.length > 0; k++) buf[rand() % buf.length] = rand() % 4 === 0 ? 0xc0 : rand() & 0xff;
      }
      for (const tcp of [false, true]) {
        const m = parseDnsMessage(buf, tcp);
        if (m !== null) {
          expect(typeof m.name).toBe('string');
          expect(m.answers.every((a) => typeof a.type === 'string' && typeof a.data === 'string')).toBe(true);
          expect(typeof m.answersTruncated).toBe('boolean');
          expect(m.answers.length).toBeLessThanOrEqual(u16At(buf, tcp ? 8 : 6));
        }
      }
    }
  });
});

// ---- DnsTracker ----

const BASE_TS = 1_700_000_000_000_000_000; // a multiple of 2^17: sums below stay exact in a float64

function dnsEvent(over: Partial<DnsEvent>): DnsEvent {
  return {
    type: 'dns',
    ts: BASE_TS,
    pid: 100,
    tid: 101,
    ppid: 1,
    uid: 1000,
    gid: 1000,
    comm: 'curl',
    cgroupId: 4242,
    containerId: 'c0ffee',
    mntns: 4026531840,
    netns: 4026531992,
    proto: 'udp',
    family: 4,
    saddr: '10.88.0.5',
    sport: 40000,
    daddr: '10.88.0.1',
    dport: 53,
    qr: 'Q',
    id: 0x1234,
    name: Q_NAME,
    qtype: 'A',
    rcode: '',
    answers: [],
    answersTruncated: false,
    ...over,
  };
}

/** The response to `q`, as seen on ingress by the client. */
function responseTo(q: DnsEvent, over: Partial<DnsEvent> = {}): DnsEvent {
  return dnsEvent({
    ...q,
    qr: 'R',
    rcode: 'NOERROR',
    answers: [A('10.1.2.3')],
    saddr: q.daddr,
    sport: q.dport,
    daddr: q.saddr,
    dport: q.sport,
    ...over,
  });
}

describe('DnsTracker', () => {
  it('pairs a response with its query and measures latency', () => {
    const t = new DnsTracker({ timeoutNs: 5e9 });
    const q = dnsEvent({});
    t.onQuery(q);
    expect(t.pending()).toBe(1);
    const r = responseTo(q, { ts: BASE_TS + 12_345_600 });
    t.onResponse(r);
    expect(r.latencyNs).toBe(12_345_600);
    expect(t.pending()).toBe(0);
    // a duplicate response has nothing left to pair with
    const dup = responseTo(q, { ts: BASE_TS + 20_000_000 });
    t.onResponse(dup);
    expect(dup.latencyNs).toBeUndefined();
  });

  it('pairs only on the full key', () => {
    const t = new DnsTracker({ timeoutNs: 5e9 });
    const q = dnsEvent({});
    t.onQuery(q);
    const mismatches: Array<Partial<DnsEvent>> = [
      { id: 0x1235 },
      { netns: 1 },
      { proto: 'tcp' },
      { saddr: '10.88.0.2' }, // another server
      { sport: 5353 },
      { daddr: '10.88.0.6' }, // another client
      { dport: 40001 },
    ];
    for (const over of mismatches) {
      const r = responseTo(q, { ts: BASE_TS + 1024, ...over });
      t.onResponse(r);
      expect(r.latencyNs, JSON.stringify(over)).toBeUndefined();
    }
    expect(t.pending()).toBe(1);
  });

  it('keeps concurrent queries apart (A and AAAA from one socket, IPv6, TCP)', () => {
    const t = new DnsTracker({ timeoutNs: 5e9 });
    const qa = dnsEvent({ id: 1, qtype: 'A' });
    const qaaaa = dnsEvent({ id: 2, qtype: 'AAAA', ts: BASE_TS + 256 });
    const q6 = dnsEvent({ id: 1, family: 6, saddr: 'fd00::5', daddr: 'fd00::1', ts: BASE_TS + 512 });
    const qtcp = dnsEvent({ id: 1, proto: 'tcp', sport: 40002, ts: BASE_TS + 768 });
    for (const q of [qa, qaaaa, q6, qtcp]) t.onQuery(q);
    expect(t.pending()).toBe(4);
    const latencies = [qaaaa, qtcp, q6, qa].map((q) => {
      const r = responseTo(q, { ts: BASE_TS + 1_048_576 });
      t.onResponse(r);
      return r.latencyNs;
    });
    expect(latencies).toEqual([1_048_576 - 256, 1_048_576 - 768, 1_048_576 - 512, 1_048_576]);
    expect(t.pending()).toBe(0);
  });

  it('measures from the last retransmission of the same query', () => {
    const t = new DnsTracker({ timeoutNs: 5e9 });
    t.onQuery(dnsEvent({ ts: BASE_TS }));
    const again = dnsEvent({ ts: BASE_TS + 1_000_000_000 });
    t.onQuery(again);
    expect(t.pending()).toBe(1);
    const r = responseTo(again, { ts: BASE_TS + 1_000_065_536 });
    t.onResponse(r);
    expect(r.latencyNs).toBe(65_536);
  });

  it('turns unanswered queries into TIMEOUT responses', () => {
    const t = new DnsTracker({ timeoutNs: 2e9 });
    const q = dnsEvent({ family: 6, saddr: 'fd00::5', sport: 41000, daddr: 'fd00::1', qtype: 'AAAA', ts: BASE_TS });
    const later = dnsEvent({ id: 99, ts: BASE_TS + 1_500_000_000 });
    t.onQuery(q);
    t.onQuery(later);
    expect(t.expire(BASE_TS + 2e9)).toEqual([]); // exactly timeoutNs old: not older
    expect(t.expire(BASE_TS + 2e9 + 1024)).toEqual([
      {
        type: 'dns',
        ts: BASE_TS + 2e9,
        pid: 100,
        tid: 101,
        ppid: 1,
        uid: 1000,
        gid: 1000,
        comm: 'curl',
        cgroupId: 4242,
        containerId: 'c0ffee',
        mntns: 4026531840,
        netns: 4026531992,
        proto: 'udp',
        family: 6,
        saddr: 'fd00::1',
        sport: 53,
        daddr: 'fd00::5',
        dport: 41000,
        qr: 'R',
        id: 0x1234,
        name: Q_NAME,
        qtype: 'AAAA',
        rcode: 'TIMEOUT',
        answers: [],
        answersTruncated: false,
        latencyNs: 2e9,
      },
    ]);
    expect(t.pending()).toBe(1);
    // a response after the timeout was already reported is not paired
    const late = responseTo(q, { ts: BASE_TS + 3e9 });
    t.onResponse(late);
    expect(late.latencyNs).toBeUndefined();
    expect(t.expire(BASE_TS + 4e9).map((e) => [e.id, e.ts])).toEqual([[99, BASE_TS + 3.5e9]]);
    expect(t.pending()).toBe(0);
  });

  it('expires out-of-order queries, oldest first', () => {
    const t = new DnsTracker({}); // default 5 s
    t.onQuery(dnsEvent({ id: 1, ts: BASE_TS + 2_000_000 }));
    t.onQuery(dnsEvent({ id: 2, ts: BASE_TS })); // arrived later from another CPU
    t.onQuery(dnsEvent({ id: 3, ts: BASE_TS + 6e9 }));
    expect(t.expire(BASE_TS + 5e9 + 4_194_304).map((e) => e.id)).toEqual([2, 1]);
    expect(t.pending()).toBe(1);
  });

  it('evicts the oldest query beyond maxPending', () => {
    const t = new DnsTracker({ timeoutNs: 5e9, maxPending: 3 });
    const qs = [1, 2, 3, 4].map((id) => dnsEvent({ id, ts: BASE_TS + id * 256 }));
    qs.forEach((q) => t.onQuery(q));
    expect(t.pending()).toBe(3);
    expect(t.evicted).toBe(1);
    const latencyOf = (q: DnsEvent) => {
      const r = responseTo(q, { ts: BASE_TS + 4096 });
      t.onResponse(r);
      return r.latencyNs;
    };
    expect(qs.map(latencyOf)).toEqual([undefined, 4096 - 512, 4096 - 768, 4096 - 1024]);
    // a retransmission does not count against the limit
    const t2 = new DnsTracker({ maxPending: 1 });
    t2.onQuery(qs[0]);
    t2.onQuery(qs[0]);
    expect([t2.pending(), t2.evicted]).toEqual([1, 0]);
  });
});
