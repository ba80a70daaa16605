/**
 * The Prometheus endpoint of a real agent: scraped before and after known
 * work, its counters move by that work.
 */
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AgentClient, describeError } from '../../src/api/client';
import { type RunningAgent, startAgentProcess, stopAgentProcess } from '../helpers/agent';

const execFileP = promisify(execFile);

/** The samples of a scrape: `name{labels}` → value. */
async function scrape(address: string): Promise<Map<string, number>> {
  const res = await fetch(`http://${address}/metrics`);
  expect(res.status).toBe(200);
  const samples = new Map<string, number>();
  for (const line of (await res.text()).split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const i = line.lastIndexOf(' ');
    samples.set(line.slice(0, i), Number(line.slice(i + 1)));
  }
  return samples;
}

describe('the metrics endpoint', () => {
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'amber-metrics-'));
  let agent: RunningAgent | undefined;
  let address = '';

  beforeAll(async () => {
    agent = await startAgentProcess(dataDir, {}, ['--metrics-listen', '127.0.0.1:0']);
    const m = /"metrics":"(127\.0\.0\.1:\d+)"/.exec(agent.logs());
    if (!m) throw new Error(`no metrics address in the agent's log:\n${agent.logs()}`);
    address = m[1];
  });
  afterAll(async () => {
    await stopAgentProcess(agent);
    fs.rmSync(dataDir, { recursive: true, force: true });
    fs.rmSync(`${dataDir}-run`, { recursive: true, force: true });
  });

  it('counts API calls exactly, events by type, and shows the buffer and the process', async () => {
    const before = await scrape(address);
    const client = new AgentClient(agent!.server);
    for (let i = 0; i < 3; i++) await client.status();
    const refused = await (async () => {
      try {
        for await (const _ of client.query({ container: '../../etc/passwd' })) void _;
        return 'no error';
      } catch (e) {
        return describeError(e);
      }
    })();
    expect(refused).toMatch(/^INVALID_ARGUMENT: container must be a container ID prefix/);
    // a known workload: N opens of /dev/null by a process of a name of its own
    const N = 20_000;
    const comm = `amet${process.pid % 10000}`;
    const storm = path.join(dataDir, comm);
    await execFileP('cc', ['-O2', '-o', storm, path.resolve(__dirname, '../../bench/workloads/open-storm.c')]);
    await execFileP(storm, [String(N)]);
    // the last events may still be on their way from the ring: ask until all are there, counting the asks
    let queries = 0;
    let stormEvents = 0;
    for (const deadline = Date.now() + 15_000; stormEvents !== N && Date.now() < deadline; ) {
      if (queries > 0) await new Promise((r) => setTimeout(r, 200));
      stormEvents = 0;
      queries++;
      for await (const batch of client.query({ types: ['open'], comm, match: '/dev/null' })) stormEvents += batch.length;
    }
    expect(stormEvents).toBe(N); // (the query sees what is not flushed yet)
    client.close();

    const after = await scrape(address);
    const delta = (k: string) => (after.get(k) ?? 0) - (before.get(k) ?? 0);
    expect(delta('amber_api_requests_total{method="Status",code="OK"}')).toBe(3);
    expect(delta('amber_api_requests_total{method="Query",code="INVALID_ARGUMENT"}')).toBe(1);
    expect(delta('amber_api_requests_total{method="Query",code="OK"}')).toBe(queries);
    expect(delta('amber_api_request_duration_seconds_count{method="Status",code="OK"}')).toBe(3);
    // host-wide: everything else on this machine opens files too
    expect(delta('amber_events_total{type="open"}')).toBeGreaterThanOrEqual(N);
    expect(delta('amber_kernel_drops_total{type="open"}')).toBe(0);
    expect(after.get('amber_api_active_streams')).toBe(0);
    expect(after.get('amber_buffer_bytes')).toBeGreaterThan(0);
    expect(after.get('amber_process_resident_memory_bytes')).toBeGreaterThan(10 << 20);
    expect(after.has('amber_process_cpu_seconds_total')).toBe(true);
    expect((await fetch(`http://${address}/other`)).status).toBe(404);
  });
});
