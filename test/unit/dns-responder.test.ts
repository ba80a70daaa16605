import { spawn } from 'node:child_process';
import { Resolver } from 'node:dns/promises';
import net from 'node:net';
import { once } from 'node:events';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseDnsMessage } from '../../src/sensor/dns';
import { DNS_RESPONDER_CLI, startDnsResponder, type DnsResponder } from '../helpers/dns-responder';

const RECORDS = {
  'amber-test.example': { A: ['10.1.2.3', '10.1.2.4'], AAAA: ['2001:db8::5'] },
  'alias.amber-test.example': { CNAME: ['amber-test.example'] },
};

function resolverFor(port: number, opts: { timeout?: number; tries?: number } = {}): Resolver {
  const resolver = new Resolver(opts);
  resolver.setServers([`127.0.0.1:${port}`]);
  return resolver;
}

/** A query in wire format, without compression. */
function query(id: number, name: string, qtype: number): Buffer {
  const labels = name.split('.').flatMap((l) => [l.length, ...Buffer.from(l)]);
  return Buffer.from([id >> 8, id & 0xff, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, ...labels, 0, qtype >> 8, qtype & 0xff, 0, 1]);
}

describe('test DNS responder', () => {
  let r: DnsResponder;
  beforeAll(async () => {
    r = await startDnsResponder({ host: '127.0.0.1', port: 0, records: RECORDS, silent: ['quiet.amber-test.example'] });
  });
  afterAll(() => r.close());

  it('answers A and AAAA over UDP', async () => {
    const resolver = resolverFor(r.port);
    expect(await resolver.resolve4('amber-test.example')).toEqual(['10.1.2.3', '10.1.2.4']);
    expect(await resolver.resolve6('AMBER-test.example')).toEqual(['2001:db8::5']);
    expect(await resolver.resolveCname('alias.amber-test.example')).toEqual(['amber-test.example']);
  });

  it('answers NXDOMAIN for unknown names', async () => {
    await expect(resolverFor(r.port).resolve4('unknown.amber-test.example')).rejects.toMatchObject({ code: 'ENOTFOUND' });
  });

  it('never answers silent names', async () => {
    const before = r.queries;
    await expect(resolverFor(r.port, { timeout: 200, tries: 1 }).resolve4('quiet.amber-test.example')).rejects.toMatchObject({
      code: 'ETIMEOUT',
    });
    expect(r.queries).toBe(before + 1);
  });

  it('answers over TCP, length-prefixed, several queries on one connection', async () => {
    const sock = net.connect(r.port, '127.0.0.1');
    await once(sock, 'connect');
    const q1 = query(0x0a0a, 'amber-test.example', 28);
    const q2 = query(0x0b0b, 'nope.example', 1);
    const framed = Buffer.concat([Buffer.from([0, q1.length]), q1, Buffer.from([0, q2.length]), q2]);
    // split mid-prefix: the responder must reassemble
    sock.write(framed.subarray(0, 1));
    await new Promise((resolve) => setTimeout(resolve, 20));
    sock.write(framed.subarray(1));
    let got = Buffer.alloc(0);
    const messages: Buffer[] = [];
    for await (const chunk of sock) {
      got = Buffer.concat([got, chunk as Buffer]);
      while (got.length >= 2 && got.length >= 2 + got.readUInt16BE(0)) {
        messages.push(got.subarray(0, 2 + got.readUInt16BE(0)));
        got = got.subarray(2 + got.readUInt16BE(0));
      }
      if (messages.length === 2) break;
    }
    sock.destroy();
    expect(messages.map((m) => parseDnsMessage(m, true))).toEqual([
      { id: 0x0a0a, qr: 'R', name: 'amber-test.example', qtype: 'AAAA', rcode: 'NOERROR', answers: [{ type: 'AAAA', data: '2001:db8::5' }], answersTruncated: false },
      { id: 0x0b0b, qr: 'R', name: 'nope.example', qtype: 'A', rcode: 'NXDOMAIN', answers: [], answersTruncated: false },
    ]);
  });

  it('runs standalone: prints "ready <port>", answers, exits on SIGTERM', async () => {
    const child = spawn(
      process.execPath,
      [DNS_RESPONDER_CLI, '--host', '127.0.0.1', '--port', '0', '--records', JSON.stringify(RECORDS), '--silent', 'a.example,b.example'],
      { stdio: ['ignore', 'pipe', 'inherit'] },
    );
    try {
      const [line] = (await once(child.stdout!, 'data')) as [Buffer];
      const match = /^ready (\d+)\n$/.exec(line.toString());
      expect(match).not.toBeNull();
      const port = Number(match![1]);
      expect(await resolverFor(port).resolve4('amber-test.example')).toEqual(['10.1.2.3', '10.1.2.4']);
      await expect(resolverFor(port, { timeout: 200, tries: 1 }).resolve4('b.example')).rejects.toMatchObject({ code: 'ETIMEOUT' });
      child.kill('SIGTERM');
      const [code] = await once(child, 'exit');
      expect(code).toBe(0);
    } finally {
      if (child.exitCode === null) child.kill('SIGKILL');
    }
  });
});
