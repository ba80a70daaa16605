/**
 * Incident benchmark: from a trigger (`Incidents.trigger`, what the API's
 * TriggerIncident calls) to a signed bundle verified on local disk, for a
 * podman container whose process holds 200 MiB of resident memory, in an
 * agent running in this process. Per round: that time, the memory dump's
 * rate (bytes copied / copy time) and how long the container's cgroup was
 * frozen, from the bundle's own capture log. Run: npm run bench:incident
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pino from 'pino';
import { startAgent } from '../src/agent';
import { loadConfig } from '../src/config';
import { INCIDENTS_DIR } from '../src/incident/manifest';
import { buildHolder, startHolder } from './memory-holder';
import { ensureTestImage, podman } from './podman';
import { median } from './workloads';

const MIB = 1 << 20;
const RESIDENT_MIB = 200;
const ROUNDS = 7;

interface Round {
  /** Each capture step's duration (the capture log's "done" records), and signing + verifying. */
  steps: Record<string, number>;
  totalMs: number;
  captureMs: number;
  dumpedBytes: number;
  copyMs: number;
  frozenMs: number;
}

async function main(): Promise<void> {
  await ensureTestImage();
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'amber-bench-incident-'));
  const binDir = path.join(tmp, 'bin');
  fs.mkdirSync(binDir, { mode: 0o755 });
  buildHolder(binDir);
  const containers: string[] = [];
  const dataDir = path.join(tmp, 'data');
  const config = loadConfig({
    overrides: [
      [['dataDir'], dataDir],
      [['api', 'listen'], [`unix://${tmp}/amber.sock`]],
      // the bundle is finished when the window ends: after 0 measures the capture itself.
      // Retention keeps 2 bundles, as a node's bounded disk does: the pages of removed bundles are reused
      // (on a VM whose memory the host backs lazily, writing never-touched pages is about 5x slower)
      [['incident', 'window'], { before: '1m', after: 0 }],
      [['incident', 'joinWindow'], 0],
      [['incident', 'retention'], { maxCount: 2 }],
    ],
  });
  const agent = await startAgent(config, pino({ level: 'warn' }));
  const rounds: Round[] = [];
  try {
    const holder = await startHolder(binDir, RESIDENT_MIB, 1, containers, 'amber-bench-incident');
    const rss = Number(/VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${holder.pid}/status`, 'utf8'))![1]) * 1024;
    console.log(`container ${holder.id.slice(0, 12)}: memory-holder pid ${holder.pid}, resident ${(rss / MIB).toFixed(0)} MiB`);
    await new Promise((r) => setTimeout(r, 1000)); // the agent learns the container
    const incidents = agent.incidents!;
    for (let i = 0; i < ROUNDS; i++) {
      const t0 = performance.now();
      const { id } = await incidents.trigger({ container: holder.id, reason: `bench round ${i}` });
      for (;;) {
        const shown = await incidents.show(id);
        // signed: the bundle is signed and verified on disk (the archive, for shipping, is packed next)
        if (shown?.summary.state === 'signed' || shown?.summary.state === 'complete') break;
        if (shown?.summary.state === 'failed') throw new Error(`incident ${id} failed: ${shown.summary.error}`);
        await new Promise((r) => setTimeout(r, 2));
      }
      const totalMs = performance.now() - t0;
      // the archive (for shipping) is packed after: waited for, so the next round does not share the cores with it
      while ((await incidents.show(id))?.summary.state !== 'complete') await new Promise((r) => setTimeout(r, 10));
      const log = fs
        .readFileSync(path.join(dataDir, INCIDENTS_DIR, id, 'capture.log.jsonl'), 'utf8')
        .split('\n')
        .filter(Boolean)
        .map((l) => JSON.parse(l) as Record<string, unknown>);
      const dump = log.find((r) => r.msg === 'dumped' && r.step === `memory ${holder.pid}`) as { dumpedBytes: number; copyMs: number; frozen: { frozenMs: number } | null } | undefined;
      if (!dump) throw new Error(`round ${i}: no memory dump in the capture log: ${JSON.stringify(log)}`);
      const sign = log.find((r) => r.step === 'sign') as { ms: number };

      // frozen: while the threads are stopped and the memory copied (the freezer's own settle time included)
      const steps: Record<string, number> = {};
      for (const r of log) if (r.msg === 'done' && typeof r.durationMs === 'number') steps[String(r.step).replace(/ \d+$/, '')] = r.durationMs;
      steps['sign and verify'] = totalMs - sign.ms;
      rounds.push({ steps, totalMs, captureMs: sign.ms, dumpedBytes: dump.dumpedBytes, copyMs: dump.copyMs, frozenMs: dump.copyMs + (dump.frozen?.frozenMs ?? 0) });
      console.log(
        `round ${i + 1}: trigger to verified bundle ${totalMs.toFixed(0)} ms; dump ${(dump.dumpedBytes / MIB).toFixed(0)} MiB in ${dump.copyMs.toFixed(0)} ms` +
          ` = ${(dump.dumpedBytes / 1e9 / (dump.copyMs / 1000)).toFixed(2)} GB/s; frozen ${(dump.copyMs + (dump.frozen?.frozenMs ?? 0)).toFixed(0)} ms`,
      );
    }
  } finally {
    await agent.close();
    for (const id of containers) await podman('rm', '-f', '-t', '0', id).catch(() => {});
    fs.rmSync(tmp, { recursive: true, force: true });
  }
  const m = (f: (r: Round) => number) => median(rounds.map(f));
  console.log(`\nbench:incident, ${ROUNDS} rounds, medians (min-max):`);
  const line = (label: string, f: (r: Round) => number, unit: string, digits = 0) =>
    console.log(`  ${label}: ${m(f).toFixed(digits)} ${unit} (${Math.min(...rounds.map(f)).toFixed(digits)}-${Math.max(...rounds.map(f)).toFixed(digits)})`);
  line('trigger to signed, verified bundle', (r) => r.totalMs, 'ms (target < 2000)');
  line('memory dump rate', (r) => r.dumpedBytes / 1e9 / (r.copyMs / 1000), 'GB/s (target >= 1)', 2);
  line('container frozen', (r) => r.frozenMs, 'ms');
  line('bytes dumped', (r) => r.dumpedBytes / MIB, 'MiB');
  console.log('  where the time goes (median ms per step):');
  for (const step of Object.keys(rounds[0].steps)) line(`    ${step}`, (r) => r.steps[step] ?? 0, 'ms');
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
