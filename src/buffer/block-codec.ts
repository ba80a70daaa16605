/**
 * Encodes events into a block payload: one msgpack array whose elements use
 * msgpackr's record extension (a record definition — `d4 72 <id>` + key list —
 * the first time a shape occurs in the block, then `<id>` + values). Every block
 * defines its own records, so any block decodes alone with msgpackr's Unpackr.
 *
 * Why not `new Packr().pack(events)`: measured at ~0.75-0.85M events/s on the
 * development machine (bench/buffer.ts prints it), under the 1M/s target for
 * the whole append path. This writer knows the shapes of events.ts and emits
 * the same wire format at about twice that rate (~1.7M/s encoding alone).
 * An event that does not have exactly a contract shape (missing or extra
 * fields, unexpected value types) is written as a plain msgpack map instead,
 * so nothing is ever dropped: the optional `…Raw` fields (bytes that are not
 * UTF-8, rare) take that path.
 */
import { isIPv4, isIPv6 } from 'node:net';
import { Unpackr } from 'msgpackr';
import type {
  AcceptEvent,
  AmberEvent,
  CommonFields,
  ConnectEvent,
  DnsAnswer,
  DnsEvent,
  EventType,
  ExecEvent,
  ExitEvent,
  ForkEvent,
  OpenEvent,
  SockFields,
} from '../sensor/events';
import { EVENT_TYPES } from '../sensor/events';
import { type BlockSummary, CONTAINER_SUMMARY_CHARS, MAX_SUMMARY_CONTAINERS } from './frame';

const COMMON_KEYS = [
  'type', 'ts', 'pid', 'tid', 'ppid', 'uid', 'gid', 'comm', 'cgroupId', 'containerId', 'mntns', 'netns',
] as const satisfies readonly (keyof CommonFields)[];
const SOCK_KEYS = ['proto', 'family', 'saddr', 'sport', 'daddr', 'dport'] as const;

const EXEC_KEYS = [
  ...COMMON_KEYS, 'filename', 'exePath', 'args', 'argsTruncated', 'upperLayer', 'fileless', 'script', 'pathTruncated',
] as const;
const EXIT_KEYS = [...COMMON_KEYS, 'exitCode', 'signal'] as const;
const FORK_KEYS = [...COMMON_KEYS, 'childPid'] as const;
const OPEN_KEYS = [...COMMON_KEYS, 'path', 'flags', 'flagNames', 'mode', 'ret', 'pathTruncated'] as const;
const CONNECT_KEYS = [...COMMON_KEYS, ...SOCK_KEYS, 'ret'] as const;
const DNS_KEYS = [...COMMON_KEYS, ...SOCK_KEYS, 'qr', 'id', 'name', 'qtype', 'rcode', 'answers', 'answersTruncated'] as const;
const DNS_LATENCY_KEYS = [...DNS_KEYS, 'latencyNs'] as const;

/** Answer records inside a dns event. */
const ANSWER_KEYS = ['type', 'data'] as const satisfies readonly (keyof DnsAnswer)[];

/** Optional fields, present only on the rare event whose bytes are not UTF-8: such events take the map path. */
type RawKeys = 'filenameRaw' | 'exePathRaw' | 'argsRaw' | 'scriptRaw' | 'pathRaw';

// Compile-time guard: a field added to events.ts must be added to its key list
// above (and written below), or every such event would take the slow map path.
type Exact<T, K extends readonly PropertyKey[]> = [Exclude<keyof T, K[number] | RawKeys>, Exclude<K[number], keyof T>] extends [
  never,
  never,
]
  ? true
  : false;
const shapesMatchContract: [
  Exact<ExecEvent, typeof EXEC_KEYS>,
  Exact<ExitEvent, typeof EXIT_KEYS>,
  Exact<ForkEvent, typeof FORK_KEYS>,
  Exact<OpenEvent, typeof OPEN_KEYS>,
  Exact<ConnectEvent, typeof CONNECT_KEYS>,
  Exact<AcceptEvent, typeof CONNECT_KEYS>,
  Exact<DnsEvent, typeof DNS_LATENCY_KEYS>,
] = [true, true, true, true, true, true, true];
void shapesMatchContract;

/** Record shapes in a fixed order; the index is the block-local shape slot. */
const SHAPES: readonly (readonly string[])[] = [
  EXEC_KEYS, EXIT_KEYS, FORK_KEYS, OPEN_KEYS, CONNECT_KEYS, CONNECT_KEYS, DNS_KEYS, DNS_LATENCY_KEYS,
];
const SHAPE_DNS_LATENCY = 7;
/** The slot of the answer record (not an event shape). */
const SHAPE_ANSWER = SHAPES.length;
const SHAPE_TYPES: readonly EventType[] = ['exec', 'exit', 'fork', 'open', 'connect', 'accept', 'dns', 'dns'];
/** Each shape's `type` value as a msgpack fixstr, encoded once. */
const SHAPE_TYPE_BYTES = SHAPE_TYPES.map((type) => Uint8Array.from([0xa0 | type.length, ...Buffer.from(type, 'latin1')]));
const FIRST_RECORD_ID = 0x40;

/** EVENT_TYPES index of each shape's type. */
const SHAPE_TYPE_INDEX = SHAPE_TYPES.map((type) => EVENT_TYPES.indexOf(type));

const NOTHING_YET = Symbol('nothing yet');

/** Thrown inside the fast path when an event is not exactly a contract shape. */
class NotContractShape extends Error {}
const NOT_CONTRACT_SHAPE = new NotContractShape('event does not have a contract shape');

export interface EncodedBlock {
  payload: Buffer;
  summary: BlockSummary;
}

/** Encoded container IDs (msgpack str header + bytes), shared by every encoder. */
const containerIdBytes = new Map<string, Buffer>();

export class BlockEncoder {
  private buf: Buffer;
  private pos = 0;
  private readonly shapeIds = new Uint8Array(SHAPES.length + 1);
  private nextRecordId = FIRST_RECORD_ID;
  private count = 0;
  private minTs = Infinity;
  private maxTs = -Infinity;
  private readonly typeCounts = new Array<number>(EVENT_TYPES.length).fill(0);
  private containers: Set<string> | null = new Set();
  private lastContainer: unknown = NOTHING_YET;

  constructor(initialBytes: number) {
    this.buf = Buffer.allocUnsafe(Math.max(initialBytes, 4096));
    this.buf[0] = 0xdd; // array32; the count is patched in finish()
    this.pos = 5;
  }

  get eventCount(): number {
    return this.count;
  }

  get byteLength(): number {
    return this.pos;
  }

  append(ev: AmberEvent): void {
    const start = this.pos;
    const definedBefore = this.nextRecordId;
    let typeIndex: number;
    try {
      typeIndex = SHAPE_TYPE_INDEX[this.writeRecord(ev)];
    } catch (err) {
      if (err !== NOT_CONTRACT_SHAPE) throw err;
      // Undo a record definition this event may have started.
      for (let i = 0; i < this.shapeIds.length; i++) if (this.shapeIds[i] >= definedBefore) this.shapeIds[i] = 0;
      this.nextRecordId = definedBefore;
      this.pos = start;
      this.writeValue(ev);
      typeIndex = EVENT_TYPES.indexOf(ev.type);
    }
    this.count++;
    if (typeIndex >= 0) this.typeCounts[typeIndex]++;
    const ts = ev.ts;
    if (typeof ts === 'number') {
      if (ts < this.minTs) this.minTs = ts;
      if (ts > this.maxTs) this.maxTs = ts;
    }
    const container = ev.containerId;
    if (container !== this.lastContainer && this.containers !== null) {
      this.lastContainer = container;
      // Full ids: the sensor reuses its container id strings, so their hashes are cached.
      this.containers.add(typeof container === 'string' ? container : '');
      if (this.containers.size > MAX_SUMMARY_CONTAINERS) this.containers = null;
    }
  }

  /** The payload and its summary; the encoder must not be used afterwards. */
  /** A copy of the payload so far, the block staying open: live queries decode it instead of closing the block. */
  peek(): Buffer {
    const copy = Buffer.from(this.buf.subarray(0, this.pos));
    copy.writeUInt32BE(this.count, 1);
    return copy;
  }

  finish(): EncodedBlock {
    this.buf.writeUInt32BE(this.count, 1);
    return {
      payload: this.buf.subarray(0, this.pos),
      summary: {
        count: this.count,
        rawLen: this.pos,
        minTs: this.count ? this.minTs : 0,
        maxTs: this.count ? this.maxTs : 0,
        typeCounts: this.typeCounts.slice(),
        containers: this.containers
          ? [...new Set([...this.containers].map((c) => c.slice(0, CONTAINER_SUMMARY_CHARS)))].sort()
          : null,
      },
    };
  }

  /** Writes a contract-shaped event as a record; returns its shape. */
  private writeRecord(ev: AmberEvent): number {
    let shape: number;
    switch (ev.type) {
      case 'exec': shape = 0; break;
      case 'exit': shape = 1; break;
      case 'fork': shape = 2; break;
      case 'open': shape = 3; break;
      case 'connect': shape = 4; break;
      case 'accept': shape = 5; break;
      case 'dns': shape = ev.latencyNs === undefined ? 6 : SHAPE_DNS_LATENCY; break;
      default: throw NOT_CONTRACT_SHAPE;
    }
    const keys = SHAPES[shape];
    // Extra fields would be lost by the record: those events take the map path.
    // (for-in counts without allocating a key array: measured ~3x cheaper than Object.keys)
    let fields = 0;
    for (const _ in ev) fields++;
    if (fields !== keys.length) throw NOT_CONTRACT_SHAPE;
    this.ensure(64);
    const id = this.shapeIds[shape];
    if (id !== 0) {
      this.buf[this.pos++] = id;
    } else {
      this.defineRecord(shape, keys);
    }
    const typeBytes = SHAPE_TYPE_BYTES[shape];
    for (let i = 0; i < typeBytes.length; i++) this.buf[this.pos++] = typeBytes[i];
    this.writeNum(ev.ts);
    this.writeNum(ev.pid);
    this.writeNum(ev.tid);
    this.writeNum(ev.ppid);
    this.writeNum(ev.uid);
    this.writeNum(ev.gid);
    this.writeStr(ev.comm);
    this.writeNum(ev.cgroupId);
    this.writeContainerId(ev.containerId);
    this.writeNum(ev.mntns);
    this.writeNum(ev.netns);
    switch (ev.type) {
      case 'exec':
        this.writeStr(ev.filename);
        this.writeStr(ev.exePath);
        this.writeStrings(ev.args);
        this.writeBool(ev.argsTruncated);
        this.writeBool(ev.upperLayer);
        this.writeBool(ev.fileless);
        this.writeStr(ev.script);
        this.writeBool(ev.pathTruncated);
        break;
      case 'exit':
        this.writeNum(ev.exitCode);
        this.writeNum(ev.signal);
        break;
      case 'fork':
        this.writeNum(ev.childPid);
        break;
      case 'open':
        this.writeStr(ev.path);
        this.writeNum(ev.flags);
        this.writeStrings(ev.flagNames);
        this.writeNum(ev.mode);
        this.writeNum(ev.ret);
        this.writeBool(ev.pathTruncated);
        break;
      case 'connect':
      case 'accept':
        this.writeSock(ev);
        this.writeNum(ev.ret);
        break;
      case 'dns':
        this.writeSock(ev);
        this.writeStr(ev.qr);
        this.writeNum(ev.id);
        this.writeStr(ev.name);
        this.writeStr(ev.qtype);
        this.writeStr(ev.rcode);
        this.writeAnswers(ev.answers);
        this.writeBool(ev.answersTruncated);
        if (shape === SHAPE_DNS_LATENCY) this.writeNum(ev.latencyNs);
        break;
    }
    return shape;
  }

  /** A record definition (`d4 72 <id>` + keys) for a shape's first use in the block. */
  private defineRecord(shape: number, keys: readonly string[]): void {
    if (this.nextRecordId > 0x7f) throw NOT_CONTRACT_SHAPE;
    const newId = this.nextRecordId++;
    this.shapeIds[shape] = newId;
    this.ensure(3);
    this.buf[this.pos++] = 0xd4; // fixext1, type 0x72 "r": record definition
    this.buf[this.pos++] = 0x72;
    this.buf[this.pos++] = newId;
    this.writeStrings(keys);
  }

  /** DNS answers as records of ANSWER_KEYS (a nested record shape, defined once per block). */
  private writeAnswers(a: unknown): void {
    if (!Array.isArray(a)) throw NOT_CONTRACT_SHAPE;
    this.writeArrayHeader(a.length);
    for (let i = 0; i < a.length; i++) {
      const answer: unknown = a[i];
      if (answer === null || typeof answer !== 'object') throw NOT_CONTRACT_SHAPE;
      let fields = 0;
      for (const _ in answer) fields++;
      if (fields !== ANSWER_KEYS.length) throw NOT_CONTRACT_SHAPE;
      const id = this.shapeIds[SHAPE_ANSWER];
      if (id !== 0) {
        this.ensure(1);
        this.buf[this.pos++] = id;
      } else {
        this.defineRecord(SHAPE_ANSWER, ANSWER_KEYS);
      }
      this.writeStr((answer as DnsAnswer).type);
      this.writeStr((answer as DnsAnswer).data);
    }
  }

  private ensure(extra: number): void {
    if (this.pos + extra <= this.buf.length) return;
    const grown = Buffer.allocUnsafe(Math.max(this.buf.length * 2, this.pos + extra));
    this.buf.copy(grown, 0, 0, this.pos);
    this.buf = grown;
  }

  private writeNum(v: unknown): void {
    if (typeof v !== 'number') throw NOT_CONTRACT_SHAPE;
    this.ensure(9);
    const b = this.buf;
    if (v >>> 0 === v) {
      // 0x40..0x7f are record ids in msgpackr's record mode: never positive fixints there.
      if (v < 0x40) b[this.pos++] = v;
      else if (v < 0x100) {
        b[this.pos++] = 0xcc;
        b[this.pos++] = v;
      } else if (v < 0x10000) {
        b[this.pos++] = 0xcd;
        b[this.pos++] = v >>> 8;
        b[this.pos++] = v & 0xff;
      } else {
        b[this.pos++] = 0xce;
        b.writeUInt32BE(v, this.pos);
        this.pos += 4;
      }
    } else if (v >> 0 === v) {
      if (v >= -32) b[this.pos++] = v & 0xff;
      else {
        b[this.pos++] = 0xd2;
        b.writeInt32BE(v, this.pos);
        this.pos += 4;
      }
    } else {
      // Timestamps and 64-bit ids: float64 is exact for what a JS number holds.
      b[this.pos++] = 0xcb;
      b.writeDoubleBE(v, this.pos);
      this.pos += 8;
    }
  }

  private writeBool(v: unknown): void {
    if (typeof v !== 'boolean') throw NOT_CONTRACT_SHAPE;
    this.ensure(1);
    this.buf[this.pos++] = v ? 0xc3 : 0xc2;
  }

  private writeStr(s: unknown): void {
    if (typeof s !== 'string') throw NOT_CONTRACT_SHAPE;
    const n = s.length;
    this.ensure(5 + 3 * n);
    const b = this.buf;
    if (n < 256) {
      // ASCII (nearly everything here: comm, ids, paths, addresses) without a native call.
      const headerAt = this.pos;
      let p = headerAt + (n < 32 ? 1 : 2);
      let i = 0;
      for (; i < n; i++) {
        const c = s.charCodeAt(i);
        if (c >= 0x80) break;
        b[p++] = c;
      }
      if (i === n) {
        if (n < 32) b[headerAt] = 0xa0 | n;
        else {
          b[headerAt] = 0xd9;
          b[headerAt + 1] = n;
        }
        this.pos = p;
        return;
      }
    }
    const len = Buffer.byteLength(s, 'utf8');
    let p = this.pos;
    if (len < 32) b[p++] = 0xa0 | len;
    else if (len < 0x100) {
      b[p++] = 0xd9;
      b[p++] = len;
    } else if (len < 0x10000) {
      b[p++] = 0xda;
      b[p++] = len >>> 8;
      b[p++] = len & 0xff;
    } else {
      b[p++] = 0xdb;
      b.writeUInt32BE(len, p);
      p += 4;
    }
    this.pos = p + b.write(s, p, len, 'utf8');
  }

  private writeArrayHeader(n: number): void {
    this.ensure(5);
    const b = this.buf;
    if (n < 16) b[this.pos++] = 0x90 | n;
    else if (n < 0x10000) {
      b[this.pos++] = 0xdc;
      b[this.pos++] = n >>> 8;
      b[this.pos++] = n & 0xff;
    } else {
      b[this.pos++] = 0xdd;
      b.writeUInt32BE(n, this.pos);
      this.pos += 4;
    }
  }

  /** The socket fields connect, accept and dns share, in the shapes' order. */
  private writeSock(ev: SockFields): void {
    this.writeStr(ev.proto);
    this.writeNum(ev.family);
    this.writeStr(ev.saddr);
    this.writeNum(ev.sport);
    this.writeStr(ev.daddr);
    this.writeNum(ev.dport);
  }

  /**
   * Container IDs are 64 characters, on every event, and a node has few: their
   * msgpack bytes are cached (measured: ~3x cheaper than encoding each time).
   */
  private writeContainerId(id: unknown): void {
    if (typeof id !== 'string') throw NOT_CONTRACT_SHAPE;
    let bytes = containerIdBytes.get(id);
    if (bytes === undefined) {
      const start = this.pos;
      this.writeStr(id);
      bytes = Buffer.from(this.buf.subarray(start, this.pos));
      if (containerIdBytes.size >= 4096) containerIdBytes.clear();
      containerIdBytes.set(id, bytes);
      return;
    }
    this.ensure(bytes.length);
    this.buf.set(bytes, this.pos);
    this.pos += bytes.length;
  }

  private writeStrings(a: unknown): void {
    if (!Array.isArray(a)) throw NOT_CONTRACT_SHAPE;
    this.writeArrayHeader(a.length);
    for (let i = 0; i < a.length; i++) this.writeStr(a[i]);
  }

  /** Any JSON-like value as plain msgpack (maps for objects), safe inside a record-mode stream. */
  private writeValue(v: unknown): void {
    if (typeof v === 'number') return this.writeNum(v);
    if (typeof v === 'string') return this.writeStr(v);
    if (typeof v === 'boolean') return this.writeBool(v);
    if (typeof v === 'bigint') return this.writeStr(v.toString());
    if (Array.isArray(v)) {
      this.writeArrayHeader(v.length);
      for (const item of v) this.writeValue(item);
      return;
    }
    if (v !== null && typeof v === 'object') {
      const entries = Object.entries(v).filter(([, value]) => value !== undefined && typeof value !== 'function');
      this.ensure(5);
      const n = entries.length;
      if (n < 16) this.buf[this.pos++] = 0x80 | n;
      else if (n < 0x10000) {
        this.buf[this.pos++] = 0xde;
        this.buf[this.pos++] = n >>> 8;
        this.buf[this.pos++] = n & 0xff;
      } else {
        this.buf[this.pos++] = 0xdf;
        this.buf.writeUInt32BE(n, this.pos);
        this.pos += 4;
      }
      for (const [key, value] of entries) {
        this.writeStr(key);
        this.writeValue(value);
      }
      return;
    }
    this.ensure(1);
    this.buf[this.pos++] = 0xc0; // nil
  }
}

const unpackr = new Unpackr({ useRecords: true, mapsAsObjects: true });

/** Decodes a block payload (see BlockEncoder) into its events. Throws on malformed data. */
export function decodeBlockPayload(payload: Buffer): AmberEvent[] {
  const events: unknown = unpackr.unpack(payload);
  if (!Array.isArray(events)) throw new Error('block payload is not an array');
  for (const ev of events) {
    if (ev !== null && typeof ev === 'object' && ev.type === 'dns') upgradeAnswers(ev as { answers?: unknown });
  }
  return events as AmberEvent[];
}

/**
 * Blocks written before answers had types hold strings: A/AAAA addresses and
 * CNAME/NS/PTR names. Addresses get their type back from their form; a name's
 * type was not stored, so it reads as type "".
 */
function upgradeAnswers(ev: { answers?: unknown }): void {
  const answers = ev.answers;
  if (!Array.isArray(answers) || answers.length === 0 || typeof answers[0] !== 'string') return;
  ev.answers = answers.map((a): DnsAnswer | unknown =>
    typeof a !== 'string' ? a : { type: isIPv4(a) ? 'A' : isIPv6(a) ? 'AAAA' : '', data: a },
  );
}

