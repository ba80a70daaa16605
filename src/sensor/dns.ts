/**
 * DNS messages as the cgroup_skb program captures them (RFC 1035 wire format,
 * possibly cut at AMBER_DNS_MAX bytes), and the pairing of queries with their
 * responses. The bytes come from any process of the node, so every read is
 * bounds-checked and nothing here throws on hostile input.
 */
import type { DnsAnswer, DnsEvent } from './events';
import { ipv4ToString, ipv6ToString } from './ip';

export interface DnsMessage {
  id: number;
  qr: 'Q' | 'R';
  /** First question's name, dotted, no trailing dot; "." for the root. */
  name: string;
  qtype: string;
  /** "" for queries. */
  rcode: string;
  /** Responses only, in answer-section order (see DnsAnswer for each type's data). */
  answers: DnsAnswer[];
  /** The message ended (cut at the capture limit, or malformed) before its last answer. */
  answersTruncated: boolean;
}

const HEADER_LEN = 12;
/** RFC 1035 3.1: a name is at most 255 octets on the wire. */
const MAX_NAME_WIRE_LEN = 255;
/** Enough for any real message; bounds the work a chain of pointers can cause. */
const MAX_POINTER_JUMPS = 16;

const TYPE_A = 1;
const TYPE_NS = 2;
const TYPE_CNAME = 5;
const TYPE_PTR = 12;
const TYPE_MX = 15;
const TYPE_TXT = 16;
const TYPE_AAAA = 28;
const TYPE_SRV = 33;
const TYPE_OPT = 41;

const TYPE_NAMES: ReadonlyMap<number, string> = new Map([
  [1, 'A'], [2, 'NS'], [5, 'CNAME'], [6, 'SOA'], [12, 'PTR'], [13, 'HINFO'], [15, 'MX'],
  [16, 'TXT'], [17, 'RP'], [18, 'AFSDB'], [24, 'SIG'], [25, 'KEY'], [28, 'AAAA'], [29, 'LOC'],
  [33, 'SRV'], [35, 'NAPTR'], [36, 'KX'], [37, 'CERT'], [39, 'DNAME'], [41, 'OPT'], [42, 'APL'],
  [43, 'DS'], [44, 'SSHFP'], [45, 'IPSECKEY'], [46, 'RRSIG'], [47, 'NSEC'], [48, 'DNSKEY'],
  [49, 'DHCID'], [50, 'NSEC3'], [51, 'NSEC3PARAM'], [52, 'TLSA'], [53, 'SMIMEA'], [55, 'HIP'],
  [59, 'CDS'], [60, 'CDNSKEY'], [61, 'OPENPGPKEY'], [62, 'CSYNC'], [63, 'ZONEMD'], [64, 'SVCB'],
  [65, 'HTTPS'], [99, 'SPF'], [108, 'EUI48'], [109, 'EUI64'], [249, 'TKEY'], [250, 'TSIG'],
  [251, 'IXFR'], [252, 'AXFR'], [253, 'MAILB'], [254, 'MAILA'], [255, 'ANY'], [256, 'URI'],
  [257, 'CAA'],
]);

/** IANA DNS RCODEs; 16 is BADVERS because the extended rcode is only read from OPT. */
const RCODE_NAMES: readonly string[] = [
  'NOERROR', 'FORMERR', 'SERVFAIL', 'NXDOMAIN', 'NOTIMP', 'REFUSED', 'YXDOMAIN', 'YXRRSET',
  'NXRRSET', 'NOTAUTH', 'NOTZONE', 'DSOTYPENI', 'RCODE12', 'RCODE13', 'RCODE14', 'RCODE15',
  'BADVERS', 'BADKEY', 'BADTIME', 'BADMODE', 'BADNAME', 'BADALG', 'BADTRUNC', 'BADCOOKIE',
];

/** Opcodes that exist (QUERY, IQUERY, STATUS, NOTIFY, UPDATE, DSO); others mean the bytes are not DNS. */
const KNOWN_OPCODES = 0b1110111;

export function dnsTypeName(type: number): string {
  return TYPE_NAMES.get(type) ?? `TYPE${type}`;
}

export function dnsRcodeName(rcode: number): string {
  return rcode < RCODE_NAMES.length ? RCODE_NAMES[rcode] : `RCODE${rcode}`;
}

/**
 * The message in `buf` (a UDP payload, or a TCP payload starting with the
 * 2-byte length prefix), or null when the bytes are not a DNS message. A cut
 * message yields the answers that are complete.
 */
export function parseDnsMessage(buf: Uint8Array, tcp: boolean): DnsMessage | null {
  let start = 0;
  let end = buf.length;
  if (tcp) {
    if (buf.length < 2) return null;
    const declared = (buf[0] << 8) | buf[1];
    if (declared < HEADER_LEN) return null;
    start = 2;
    // Several messages may share a segment: only the first is read.
    end = Math.min(buf.length, start + declared);
  }
  if (end - start < HEADER_LEN) return null;

  const id = u16(buf, start);
  const flags = u16(buf, start + 2);
  const qdcount = u16(buf, start + 4);
  const ancount = u16(buf, start + 6);
  const nscount = u16(buf, start + 8);
  const arcount = u16(buf, start + 10);
  const isResponse = (flags & 0x8000) !== 0;
  const opcode = (flags >> 11) & 0xf;
  if (qdcount === 0 || ((KNOWN_OPCODES >> opcode) & 1) === 0) return null;

  const name = readName(buf, start, start + HEADER_LEN, end);
  if (name === null) return null;
  let pos = nameEnd;
  if (pos + 2 > end) return null;
  const qtype = dnsTypeName(u16(buf, pos));

  if (!isResponse) return { id, qr: 'Q', name, qtype, rcode: '', answers: [], answersTruncated: false };

  let rcode = flags & 0xf;
  const answers: DnsAnswer[] = [];
  let answersRead = 0;
  pos += 4; // QTYPE, QCLASS
  for (let i = 1; i < qdcount && pos >= 0; i++) {
    pos = skipName(buf, pos, end);
    if (pos >= 0) pos += 4;
  }

  for (let i = 0; i < ancount && pos >= 0; i++) {
    pos = skipName(buf, pos, end);
    if (pos < 0 || pos + 10 > end) {
      pos = -1;
      break;
    }
    const type = u16(buf, pos);
    const rdata = pos + 10;
    const rdataEnd = rdata + u16(buf, pos + 8);
    if (rdataEnd > end) {
      pos = -1; // cut inside this record: nothing after it is readable
      break;
    }
    const data = rdataText(buf, start, type, rdata, rdataEnd, end);
    if (data !== null) answers.push({ type: dnsTypeName(type), data });
    answersRead++;
    pos = rdataEnd;
  }

  // EDNS (RFC 6891): the OPT record carries the upper 8 bits of the rcode.
  if (arcount > 0 && pos >= 0) {
    for (let i = 0; i < nscount + arcount && pos >= 0; i++) {
      pos = skipName(buf, pos, end);
      if (pos < 0 || pos + 10 > end) break;
      if (i >= nscount && u16(buf, pos) === TYPE_OPT) {
        rcode |= buf[pos + 4] << 4;
        break;
      }
      pos += 10 + u16(buf, pos + 8);
    }
  }

  return { id, qr: 'R', name, qtype, rcode: dnsRcodeName(rcode), answers, answersTruncated: answersRead < ancount };
}

/**
 * An answer's data in presentation form (see DnsAnswer), or null when the
 * record is malformed (e.g. an A record of 3 bytes, a name running past its rdata).
 */
function rdataText(buf: Uint8Array, start: number, type: number, rdata: number, rdataEnd: number, end: number): string | null {
  const len = rdataEnd - rdata;
  switch (type) {
    case TYPE_A:
      return len === 4 ? ipv4ToString(buf, rdata) : null;
    case TYPE_AAAA:
      return len === 16 ? ipv6ToString(buf, rdata) : null;
    case TYPE_CNAME:
    case TYPE_PTR:
    case TYPE_NS: {
      const target = readName(buf, start, rdata, end);
      return target !== null && nameEnd <= rdataEnd ? target : null;
    }
    case TYPE_MX: {
      if (len < 3) return null;
      const target = readName(buf, start, rdata + 2, end);
      return target !== null && nameEnd <= rdataEnd ? `${u16(buf, rdata)} ${target}` : null;
    }
    case TYPE_SRV: {
      if (len < 7) return null;
      const target = readName(buf, start, rdata + 6, end);
      return target !== null && nameEnd <= rdataEnd
        ? `${u16(buf, rdata)} ${u16(buf, rdata + 2)} ${u16(buf, rdata + 4)} ${target}`
        : null;
    }
    case TYPE_TXT: {
      let out = '';
      let p = rdata;
      while (p < rdataEnd) {
        const n = buf[p];
        if (p + 1 + n > rdataEnd) return null;
        out += (out === '' ? '"' : ' "') + quoted(buf, p + 1, p + 1 + n) + '"';
        p += 1 + n;
      }
      return out;
    }
    default: {
      // RFC 3597: the unknown type's bytes, so nothing of the answer is lost
      let hex = '';
      for (let i = rdata; i < rdataEnd; i++) hex += (buf[i] < 16 ? '0' : '') + buf[i].toString(16);
      return len === 0 ? '\\# 0' : `\\# ${len} ${hex}`;
    }
  }
}

/** A character-string's bytes inside double quotes (RFC 1035 5.1): " and \ escaped, non-printable bytes as \DDD. */
function quoted(buf: Uint8Array, from: number, to: number): string {
  let out = '';
  for (let i = from; i < to; i++) {
    const c = buf[i];
    if (c >= 0x20 && c < 0x7f) out += c === 0x22 || c === 0x5c ? '\\' + String.fromCharCode(c) : String.fromCharCode(c);
    else out += c < 10 ? '\\00' + c : c < 100 ? '\\0' + c : '\\' + c;
  }
  return out;
}

function u16(buf: Uint8Array, off: number): number {
  return (buf[off] << 8) | buf[off + 1];
}

/** Offset just after the last name read in place (after its first pointer, if any); set by readName. */
let nameEnd = 0;

/**
 * The name at `off`, following compression pointers (offsets from `start`),
 * or null when it is malformed, too long, loops, or runs past `end`.
 */
function readName(buf: Uint8Array, start: number, off: number, end: number): string | null {
  let name = '';
  let wireLen = 1; // the root label
  let jumps = 0;
  let pos = off;
  let afterFirstPointer = -1;
  for (;;) {
    if (pos >= end) return null;
    const len = buf[pos];
    if (len === 0) {
      pos++;
      break;
    }
    const kind = len & 0xc0;
    if (kind === 0xc0) {
      if (pos + 2 > end || ++jumps > MAX_POINTER_JUMPS) return null;
      if (afterFirstPointer < 0) afterFirstPointer = pos + 2;
      pos = start + (((len & 0x3f) << 8) | buf[pos + 1]);
      continue;
    }
    if (kind !== 0) return null; // 0x40 extended and 0x80 reserved label types
    wireLen += len + 1;
    if (wireLen > MAX_NAME_WIRE_LEN || pos + 1 + len > end) return null;
    if (name !== '') name += '.';
    name = appendLabel(name, buf, pos + 1, pos + 1 + len);
    pos += 1 + len;
  }
  nameEnd = afterFirstPointer >= 0 ? afterFirstPointer : pos;
  return name === '' ? '.' : name;
}

/**
 * Label bytes in presentation format (RFC 1035 5.1, as dig prints): "." and
 * "\" escaped, bytes outside printable ASCII as \DDD, so a label cannot forge
 * dots or terminal control sequences.
 */
function appendLabel(name: string, buf: Uint8Array, from: number, to: number): string {
  for (let i = from; i < to; i++) {
    const c = buf[i];
    if (c > 0x20 && c < 0x7f) {
      name += c === 0x2e || c === 0x5c ? '\\' + String.fromCharCode(c) : String.fromCharCode(c);
    } else {
      name += c < 10 ? '\\00' + c : c < 100 ? '\\0' + c : '\\' + c;
    }
  }
  return name;
}

/** Offset after the name at `off` without following pointers, or -1 when it runs past `end`. */
function skipName(buf: Uint8Array, off: number, end: number): number {
  let pos = off;
  while (pos < end) {
    const len = buf[pos];
    if (len === 0) return pos + 1;
    if ((len & 0xc0) === 0xc0) return pos + 2 <= end ? pos + 2 : -1;
    if ((len & 0xc0) !== 0) return -1;
    pos += len + 1;
  }
  return -1;
}

export interface DnsTrackerOptions {
  /** A query unanswered this long becomes a TIMEOUT response. Default 5 s. */
  timeoutNs?: number;
  /** Queries remembered at most; the oldest is dropped beyond. Default 65536. */
  maxPending?: number;
}

/**
 * Pairs responses with their queries (latency) and turns unanswered queries
 * into TIMEOUT responses. A retransmission with the same key replaces the
 * pending query, so latency is measured from the last send.
 */
export class DnsTracker {
  readonly timeoutNs: number;
  readonly maxPending: number;
  /** Queries dropped to stay within maxPending, since construction. */
  evicted = 0;
  // Insertion order is arrival order: the first key is the oldest query.
  private readonly queries = new Map<string, DnsEvent>();

  constructor(opts: DnsTrackerOptions = {}) {
    this.timeoutNs = opts.timeoutNs ?? 5e9;
    this.maxPending = Math.max(1, opts.maxPending ?? 65536);
  }

  onQuery(ev: DnsEvent): void {
    const key = pairKey(ev.netns, ev.saddr, ev.sport, ev.daddr, ev.dport, ev.proto, ev.id);
    if (this.queries.delete(key) === false && this.queries.size >= this.maxPending) {
      const oldest = this.queries.keys().next();
      if (!oldest.done) {
        this.queries.delete(oldest.value);
        this.evicted++;
      }
    }
    this.queries.set(key, ev);
  }

  onResponse(ev: DnsEvent): void {
    const key = pairKey(ev.netns, ev.daddr, ev.dport, ev.saddr, ev.sport, ev.proto, ev.id);
    const query = this.queries.get(key);
    if (query === undefined) return;
    this.queries.delete(key);
    ev.latencyNs = ev.ts - query.ts;
  }

  /** TIMEOUT responses for the queries older than timeoutNs at nowNs, oldest first; they are forgotten. */
  expire(nowNs: number): DnsEvent[] {
    const expired: DnsEvent[] = [];
    // A full scan: events from different CPUs arrive slightly out of ts order.
    for (const [key, q] of this.queries) {
      if (nowNs - q.ts <= this.timeoutNs) continue;
      this.queries.delete(key);
      expired.push({
        type: 'dns',
        ts: q.ts + this.timeoutNs,
        pid: q.pid,
        tid: q.tid,
        ppid: q.ppid,
        uid: q.uid,
        gid: q.gid,
        comm: q.comm,
        cgroupId: q.cgroupId,
        containerId: q.containerId,
        mntns: q.mntns,
        netns: q.netns,
        proto: q.proto,
        family: q.family,
        saddr: q.daddr,
        sport: q.dport,
        daddr: q.saddr,
        dport: q.sport,
        qr: 'R',
        id: q.id,
        name: q.name,
        qtype: q.qtype,
        rcode: 'TIMEOUT',
        answers: [],
        answersTruncated: false,
        latencyNs: this.timeoutNs,
      });
    }
    if (expired.length > 1) expired.sort((a, b) => a.ts - b.ts);
    return expired;
  }

  pending(): number {
    return this.queries.size;
  }
}

function pairKey(netns: number, client: string, clientPort: number, server: string, serverPort: number, proto: string, id: number): string {
  return `${netns} ${client} ${clientPort} ${server} ${serverPort} ${proto} ${id}`;
}
