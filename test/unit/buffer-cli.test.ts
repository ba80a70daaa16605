import { cp, readFile, writeFile } from 'node:fs/promises';
import * as path from 'node:path';
import { PassThrough } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { bufferQuery, bufferStats } from '../../src/cli/buffer';
import { formatColumns } from '../../src/cli/format';
import { EventBuffer } from '../../src/buffer';
import { MetadataDir } from '../../src/containers/metadata-dir';
import type { AmberEvent } from '../../src/sensor/events';
import {
  acceptEvent,
  CONTAINER_A,
  CONTAINER_B,
  connectEvent,
  dnsEvent,
  execEvent,
  exitEvent,
  forkEvent,
  KEEP_OLD,
  openEvent,
  T0,
  tempDir,
} from '../helpers/buffer-events';

const MS = 1e6;
const events: AmberEvent[] = [
  execEvent(T0 + 1 * MS, { pid: 10, comm: 'bash', exePath: '/usr/bin/curl', filename: 'curl', args: ['curl', '-d', 'a b', ''], upperLayer: true }),
  openEvent(T0 + 2 * MS, { pid: 10, comm: 'bash', path: '/etc/shadow', flagNames: ['O_RDONLY', 'O_CLOEXEC'], ret: -13 }),
  connectEvent(T0 + 3 * MS, { pid: 11, comm: 'curl', containerId: CONTAINER_B, ret: -111 }),
  acceptEvent(T0 + 4 * MS, { pid: 12, comm: 'nginx' }),
  dnsEvent(T0 + 5 * MS, { pid: 11, comm: 'curl', qr: 'Q', rcode: '', answers: [], latencyNs: undefined, name: 'evil.example' }),
  dnsEvent(T0 + 6 * MS, { pid: 11, comm: 'curl', name: 'evil.example', answers: [{ type: 'A', data: '203.0.113.7' }, { type: 'A', data: '203.0.113.8' }] }),
  forkEvent(T0 + 7 * MS, { pid: 30, comm: 'cron', containerId: '' }),
  exitEvent(T0 + 8 * MS, { pid: 31, comm: 'evil\x1b[2Jname', containerId: '', signal: 9, exitCode: 0 }),
].map((e) => JSON.parse(JSON.stringify(e)) as AmberEvent); // as stored: no undefined fields

let dir: string;
let cleanup: () => Promise<void>;

beforeAll(async () => {
  ({ dir, cleanup } = await tempDir());
  const buffer = await EventBuffer.open({ dataDir: dir, ...KEEP_OLD });
  buffer.append(events);
  await buffer.close();
});
afterAll(() => cleanup());

async function run(command: typeof bufferQuery, argv: string[]) {
  const out = new PassThrough();
  const err = new PassThrough();
  const chunks: Buffer[] = [];
  const errChunks: Buffer[] = [];
  out.on('data', (c: Buffer) => chunks.push(c));
  err.on('data', (c: Buffer) => errChunks.push(c));
  const code = await command(argv, out, err);
  return { code, out: Buffer.concat(chunks).toString('utf8'), err: Buffer.concat(errChunks).toString('utf8') };
}

const jsonLines = (text: string) => text.trimEnd().split('\n').map((l) => JSON.parse(l) as AmberEvent);

describe('amber buffer query', () => {
  it('prints every event as one JSON object per line, in time order', async () => {
    const r = await run(bufferQuery, ['--data-dir', dir, '-o', 'json']);
    expect(r).toMatchObject({ code: 0, err: '' });
    expect(jsonLines(r.out)).toEqual(events);
    // Field names and order as in events.ts.
    expect(r.out.split('\n')[0]).toBe(
      `{"type":"exec","ts":${T0 + MS},"pid":10,"tid":100,"ppid":1,"uid":0,"gid":0,"comm":"bash","cgroupId":4242,` +
        `"containerId":"${CONTAINER_A}","mntns":4026531840,"netns":4026531992,"filename":"curl","exePath":"/usr/bin/curl",` +
        '"args":["curl","-d","a b",""],"argsTruncated":false,"upperLayer":true,"fileless":false,"script":"","pathTruncated":false}',
    );
  });

  it('prints a readable table with each type\'s key fields, neutralising control characters', async () => {
    const r = await run(bufferQuery, ['--data-dir', dir]);
    expect(r.code).toBe(0);
    const a = CONTAINER_A.slice(0, 12);
    const b = CONTAINER_B.slice(0, 12);
    // no containers/ metadata here: containers show their ID's first 12 characters, no pod
    expect(r.out.split('\n')).toEqual([
      'TIME(UTC)     NAMESPACE     POD                   CONTAINER             PID  COMM              TYPE     DETAILS',
      `12:00:00.001                                      ${a}           10  bash              exec     /usr/bin/curl (as curl)  curl -d "a b" ""  [upper-layer]`,
      `12:00:00.002                                      ${a}           10  bash              open     /etc/shadow  O_RDONLY|O_CLOEXEC  -13 (EACCES)`,
      `12:00:00.003                                      ${b}           11  curl              connect  tcp 10.0.0.2:40000 -> 10.0.0.9:443  -111 (ECONNREFUSED)`,
      `12:00:00.004                                      ${a}           12  nginx             accept   tcp [fd00::2]:8080 -> [fd00::9]:51000`,
      `12:00:00.005                                      ${a}           11  curl              dns      Q A evil.example`,
      `12:00:00.006                                      ${a}           11  curl              dns      R A evil.example NOERROR 203.0.113.7,203.0.113.8  (1.3 ms)`,
      '12:00:00.007                                      host                   30  cron              fork     child 101',
      '12:00:00.008                                      host                   31  evil\\x1b[2Jname   exit     signal 9 (SIGKILL)',
      '',
    ]);
  });

  it('joins the data dir\'s container metadata: NAMESPACE, POD, the container\'s name, --pod/--image, --columns', async () => {
    const { dir: copy, cleanup: done } = await tempDir();
    try {
      await cp(dir, copy, { recursive: true });
      const md = await MetadataDir.open(copy, { create: true });
      await md.write({
        containerId: CONTAINER_A, runtime: 'containerd', name: 'web', image: 'docker.io/library/nginx:1.27', imageId: 'sha256:1', startedAt: '2024-05-01T11:00:00.000Z',
        initPid: 5, overlay: null, pod: { name: 'web-7f9', namespace: 'shop', uid: 'u1', labels: {} }, removedAt: '', errors: [],
      });
      const r = await run(bufferQuery, ['--data-dir', copy, '--pod', 'web-7f9', '--type', 'exec,open']);
      expect(r).toMatchObject({ code: 0, err: '' });
      expect(r.out.split('\n')).toEqual([
        'TIME(UTC)     NAMESPACE     POD                   CONTAINER             PID  COMM              TYPE     DETAILS',
        '12:00:00.001  shop          web-7f9               web                    10  bash              exec     /usr/bin/curl (as curl)  curl -d "a b" ""  [upper-layer]',
        '12:00:00.002  shop          web-7f9               web                    10  bash              open     /etc/shadow  O_RDONLY|O_CLOEXEC  -13 (EACCES)',
        '',
      ]);
      const chosen = await run(bufferQuery, ['--data-dir', copy, '--image', 'nginx', '--type', 'fork,accept', '--columns', 'pod,type,pid']);
      expect(chosen.out.split('\n')).toEqual(['POD                   TYPE         PID', 'web-7f9               accept        12', '']);
      const json = await run(bufferQuery, ['--data-dir', copy, '--namespace', 'shop', '--type', 'accept', '-o', 'json']);
      expect(Object.entries(JSON.parse(json.out)).slice(-5)).toEqual([
        ['runtime', 'containerd'], ['container', 'web'], ['image', 'docker.io/library/nginx:1.27'], ['pod', 'web-7f9'], ['namespace', 'shop'],
      ]);
      const bad = await run(bufferQuery, ['--data-dir', copy, '--columns', 'pod,nope']);
      expect(bad.code).toBe(2);
      expect(bad.err).toContain('--columns: unknown column "nope" (valid: node, time, namespace, pod, container, pid, comm, type, details)');
    } finally {
      await done();
    }
  });

  it('shows an event that is not a contract shape whole instead of failing', () => {
    const partial = { type: 'exec', ts: T0, pid: 7 } as unknown as AmberEvent;
    expect(formatColumns(partial)).toBe(
      `                                    host                    7  undefined         exec     {"type":"exec","ts":${T0},"pid":7}`,
    );
  });

  it.each([
    [['--type', 'dns,fork'], [4, 5, 6]],
    [['--host'], [6, 7]],
    [['--container', CONTAINER_B.slice(0, 5)], [2]],
    [['--pid', '11'], [2, 4, 5]],
    [['--comm', 'bash'], [0, 1]],
    [['--match', 'evil.ex'], [4, 5]],
    [['--since', '2024-05-01T12:00:00.006Z'], [5, 6, 7]],
    [['--until', '2024-05-01T12:00:00.002Z'], [0, 1]],
    [['--since', String(T0 + 3 * MS), '--until', String(T0 + 4 * MS)], [2, 3]],
    [['--limit', '2'], [0, 1]],
    [['--type', 'open', '--host'], []],
  ])('filters with %j', async (flags, indexes) => {
    const r = await run(bufferQuery, ['--data-dir', dir, '-o', 'json', ...flags]);
    expect(r).toMatchObject({ code: 0, err: '' });
    expect(r.out === '' ? [] : jsonLines(r.out)).toEqual(indexes.map((i) => events[i]));
  });

  it('takes --since as a duration ago', async () => {
    // Everything is from 2024: nothing in the last 5 minutes, everything in the last 100000 days.
    expect((await run(bufferQuery, ['--data-dir', dir, '-o', 'json', '--since', '5m'])).out).toBe('');
    expect(jsonLines((await run(bufferQuery, ['--data-dir', dir, '-o', 'json', '--since', '100000d'])).out)).toEqual(events);
  });

  it.each([
    [['--bogus'], "Unknown option '--bogus'"],
    [['extra'], "Unexpected argument 'extra'"],
    [['--type', 'exec,bogus'], '--type: unknown event type "bogus" (known: exec, exit, fork, open, connect, accept, dns, drift, alert)'],
    [['--since', 'yesterday'], '--since: invalid time "yesterday": use a duration ago'],
    [['--since', '1m', '--until', '2m'], 'is after --until'],
    [['--pid=-1'], '--pid must be an integer >= 0, got "-1"'],
    [['--pid', '12abc'], '--pid must be an integer >= 0, got "12abc"'],
    [['--limit', '0'], '--limit must be an integer >= 1, got "0"'],
    [['-o', 'xml'], '-o must be columns or json, got "xml"'],
    [['--comm', ''], '--comm must not be empty'],
  ])('rejects %j with exit code 2 and the usage', async (flags, message) => {
    const r = await run(bufferQuery, ['--data-dir', dir, ...flags]);
    expect(r.code).toBe(2);
    expect(r.out).toBe('');
    expect(r.err).toContain(`amber buffer query: `);
    expect(r.err).toContain(message);
    expect(r.err).toContain('usage: amber buffer query');
  });

  it('reports a damaged block on stderr and prints the rest', async () => {
    const damaged = await tempDir();
    try {
      const buffer = await EventBuffer.open({ dataDir: damaged.dir, ...KEEP_OLD, blockBytes: 1 }); // one event per block
      buffer.append(events);
      await buffer.close();
      const segment = path.join(damaged.dir, 'segments', 'segment-0000000000000001.amb');
      const data = await readFile(segment);
      const secondBlock = data.indexOf('ABLK', data.indexOf('ABLK') + 1);
      data[secondBlock + 40] ^= 0xff;
      await writeFile(segment, data);
      const r = await run(bufferQuery, ['--data-dir', damaged.dir, '-o', 'json']);
      expect(r.code).toBe(0);
      expect(jsonLines(r.out)).toEqual(events.filter((_, i) => i !== 1));
      expect(r.err).toMatch(/^amber buffer: warn: event buffer: skipping a damaged block \{"file":".*segment-0000000000000001\.amb","offset":\d+,"reason":"block checksum mismatch"\}\n$/);
    } finally {
      await damaged.cleanup();
    }
  });

  it('fails with exit code 1 on a data dir that does not exist', async () => {
    const r = await run(bufferQuery, ['--data-dir', `${dir}/missing`]);
    expect(r).toEqual({ code: 1, out: '', err: `amber buffer query: data dir ${dir}/missing does not exist or is not a directory\n` });
  });

  it('prints the usage on --help', async () => {
    const r = await run(bufferQuery, ['--help']);
    expect(r.code).toBe(0);
    expect(r.out).toContain('usage: amber buffer query');
  });
});

describe('amber buffer stats', () => {
  it('prints the stats as JSON', async () => {
    const r = await run(bufferStats, ['--data-dir', dir, '-o', 'json']);
    expect(r.code).toBe(0);
    const stats = JSON.parse(r.out);
    expect(stats).toMatchObject({
      dataDir: dir,
      readOnly: true,
      segments: 1,
      events: 8,
      oldestTs: T0 + 1 * MS,
      newestTs: T0 + 8 * MS,
      eventsPerType: { exec: 1, exit: 1, fork: 1, open: 1, connect: 1, accept: 1, dns: 2 },
      frozen: { windows: [], bytes: 0, refused: 0 },
    });
  });

  it('prints the stats as text', async () => {
    const r = await run(bufferStats, ['--data-dir', dir]);
    expect(r.code).toBe(0);
    const lines = r.out.split('\n');
    expect(lines[0]).toBe(`data dir    ${dir} (read-only)`);
    expect(lines[1]).toMatch(/^segments {4}1 \(\d+(\.\d)? (B|KiB)\)$/);
    expect(lines.slice(2)).toEqual([
      'events      8',
      'oldest      2024-05-01T12:00:00.001Z',
      'newest      2024-05-01T12:00:00.008Z (span 0s)',
      'per type    exec 1, exit 1, fork 1, open 1, connect 1, accept 1, dns 2, drift 0, alert 0',
      'frozen      0 window(s), 0 B',
      '',
    ]);
  });

  it('rejects bad flags with exit code 2', async () => {
    const r = await run(bufferStats, ['--data-dir', dir, '-o', 'yaml']);
    expect(r.code).toBe(2);
    expect(r.err).toContain('amber buffer stats: -o must be text or json, got "yaml"');
  });
});
