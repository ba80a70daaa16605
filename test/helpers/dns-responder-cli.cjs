#!/usr/bin/env node
'use strict';
/**
 * A tiny authoritative DNS responder over UDP and TCP, for tests. Plain
 * JavaScript so e2e tests can run it inside a container's network namespace:
 *   nsenter --net=/proc/<pid>/ns/net node test/helpers/dns-responder-cli.cjs \
 *     --host 127.0.0.1 --port 53 --records '{"a.example":{"A":["10.1.2.3"]}}' --silent b.example
 * prints "ready <port>" once listening and exits on SIGTERM.
 * Records: { name: { A?: string[], AAAA?: string[], CNAME?: string[], TXT?: string[] } };
 * a TXT value is sent as character-strings of at most 255 bytes each.
 * Unknown names get NXDOMAIN; names in `silent` are never answered.
 */
const dgram = require('node:dgram');
const net = require('node:net');

const TYPES = { A: 1, CNAME: 5, TXT: 16, AAAA: 28 };
const CLASS_IN = 1;
const TTL = 60;
const RCODE_NOERROR = 0;
const RCODE_FORMERR = 1;
const RCODE_NXDOMAIN = 3;

function normalizeName(name) {
  return name.toLowerCase().replace(/\.$/, '');
}

/** { name, qtype, questionEnd } of a query's first question, or null. Queries carry no compression. */
function parseQuestion(msg) {
  if (msg.length < 12 || msg.readUInt16BE(4) === 0) return null;
  const labels = [];
  let pos = 12;
  while (pos < msg.length && msg[pos] !== 0) {
    const len = msg[pos];
    if (len > 63 || pos + 1 + len > msg.length) return null;
    labels.push(msg.toString('latin1', pos + 1, pos + 1 + len));
    pos += 1 + len;
  }
  if (pos + 5 > msg.length) return null;
  return { name: labels.join('.'), qtype: msg.readUInt16BE(pos + 1), questionEnd: pos + 5 };
}

function ipv6Bytes(text) {
  const halves = text.split('::');
  const groups = (s) => (s === '' ? [] : s.split(':'));
  const head = groups(halves[0]);
  const tail = halves.length > 1 ? groups(halves[1]) : [];
  const all = [...head, ...Array(8 - head.length - tail.length).fill('0'), ...tail];
  const out = Buffer.alloc(16);
  all.forEach((g, i) => out.writeUInt16BE(parseInt(g, 16), 2 * i));
  return out;
}

function nameBytes(name) {
  const parts = normalizeName(name).split('.').filter(Boolean);
  return Buffer.concat([...parts.map((p) => Buffer.concat([Buffer.from([p.length]), Buffer.from(p, 'latin1')])), Buffer.from([0])]);
}

function rdataOf(type, value) {
  if (type === TYPES.A) return Buffer.from(value.split('.').map(Number));
  if (type === TYPES.AAAA) return ipv6Bytes(value);
  if (type === TYPES.TXT) {
    const bytes = Buffer.from(value, 'latin1');
    const strings = [];
    for (let i = 0; i < bytes.length || i === 0; i += 255) {
      const chunk = bytes.subarray(i, i + 255);
      strings.push(Buffer.from([chunk.length]), chunk);
    }
    return Buffer.concat(strings);
  }
  return nameBytes(value);
}

/** The response to `query`, or null to stay silent. */
function respond(query, records, silent) {
  if (query.length < 12) return null;
  const q = parseQuestion(query);
  const header = Buffer.alloc(12);
  header.writeUInt16BE(query.readUInt16BE(0), 0);
  const rd = query[2] & 0x01;
  if (q === null) {
    header.writeUInt16BE(0x8000 | (rd << 8) | RCODE_FORMERR, 2);
    return header;
  }
  const name = normalizeName(q.name);
  if (silent.has(name)) return null;
  const rrset = records.get(name);
  const answers = [];
  if (rrset) {
    // A CNAME answers every type, as an authoritative server without the target's zone would.
    for (const [typeName, values] of Object.entries(rrset)) {
      const type = TYPES[typeName];
      if (type === undefined || (type !== q.qtype && type !== TYPES.CNAME)) continue;
      for (const value of values) {
        const rdata = rdataOf(type, value);
        const rr = Buffer.alloc(12);
        rr.writeUInt16BE(0xc00c, 0); // pointer to the question's name
        rr.writeUInt16BE(type, 2);
        rr.writeUInt16BE(CLASS_IN, 4);
        rr.writeUInt32BE(TTL, 6);
        rr.writeUInt16BE(rdata.length, 10);
        answers.push(rr, rdata);
      }
    }
  }
  const rcode = rrset ? RCODE_NOERROR : RCODE_NXDOMAIN;
  header.writeUInt16BE(0x8000 | 0x0400 | (rd << 8) | rcode, 2); // QR, AA
  header.writeUInt16BE(1, 4);
  header.writeUInt16BE(answers.length / 2, 6);
  return Buffer.concat([header, query.subarray(12, q.questionEnd), ...answers]);
}

/**
 * Listens on UDP and TCP on the same port (port 0: any free one) and resolves
 * to { port, close(), queries } where queries counts the queries received.
 */
async function startDnsResponder(opts) {
  const host = opts.host ?? '127.0.0.1';
  const records = new Map(Object.entries(opts.records ?? {}).map(([k, v]) => [normalizeName(k), v]));
  const silent = new Set((opts.silent ?? []).map(normalizeName));
  const state = { queries: 0 };
  const handle = (msg) => {
    state.queries++;
    return respond(msg, records, silent);
  };

  // With port 0 the TCP port picked may already be taken for UDP: retry.
  for (let attempt = 0; ; attempt++) {
    const udp = dgram.createSocket(net.isIPv6(host) ? 'udp6' : 'udp4');
    const tcp = net.createServer((sock) => serveTcp(sock, handle));
    const conns = new Set();
    tcp.on('connection', (sock) => {
      conns.add(sock);
      sock.on('close', () => conns.delete(sock));
    });
    udp.on('message', (msg, rinfo) => {
      const reply = handle(msg);
      if (reply) udp.send(reply, rinfo.port, rinfo.address);
    });
    try {
      await new Promise((resolve, reject) => {
        udp.once('error', reject);
        udp.bind(opts.port ?? 0, host, () => resolve());
      });
      const port = udp.address().port;
      await new Promise((resolve, reject) => {
        tcp.once('error', reject);
        tcp.listen(port, host, () => resolve());
      });
      udp.on('error', () => {}); // e.g. ICMP port unreachable after a client gave up
      return {
        port,
        get queries() {
          return state.queries;
        },
        close: () =>
          new Promise((resolve) => {
            for (const sock of conns) sock.destroy();
            udp.close(() => tcp.close(() => resolve()));
          }),
      };
    } catch (err) {
      try {
        udp.close();
      } catch {}
      tcp.close();
      if (opts.port || err.code !== 'EADDRINUSE' || attempt >= 10) throw err;
    }
  }
}

function serveTcp(sock, handle) {
  let pending = Buffer.alloc(0);
  sock.on('error', () => {});
  sock.on('data', (chunk) => {
    pending = Buffer.concat([pending, chunk]);
    while (pending.length >= 2 && pending.length >= 2 + pending.readUInt16BE(0)) {
      const len = pending.readUInt16BE(0);
      const reply = handle(pending.subarray(2, 2 + len));
      pending = pending.subarray(2 + len);
      if (reply) {
        const prefix = Buffer.alloc(2);
        prefix.writeUInt16BE(reply.length, 0);
        sock.write(Buffer.concat([prefix, reply]));
      }
    }
  });
}

function parseArgs(argv) {
  const opts = { host: '127.0.0.1', port: 53, records: {}, silent: [] };
  for (let i = 0; i < argv.length; i += 2) {
    const value = argv[i + 1] ?? '';
    if (argv[i] === '--host') opts.host = value;
    else if (argv[i] === '--port') opts.port = Number(value);
    else if (argv[i] === '--records') opts.records = JSON.parse(value);
    else if (argv[i] === '--silent') opts.silent = value.split(',').filter(Boolean);
    else throw new Error(`unknown argument ${argv[i]}`);
  }
  return opts;
}

if (require.main === module) {
  Promise.resolve()
    .then(() => startDnsResponder(parseArgs(process.argv.slice(2))))
    .then(
      (r) => {
        const stop = () => r.close().then(() => process.exit(0));
        process.on('SIGTERM', stop);
        process.on('SIGINT', stop);
        process.stdout.write(`ready ${r.port}\n`);
      },
      (err) => {
        process.stderr.write(`dns-responder: ${err.message}\n`);
        process.exit(1);
      },
    );
}

module.exports = { startDnsResponder };
