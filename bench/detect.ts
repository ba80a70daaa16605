/**
 * Detector benchmark: events per second through the detector (process table,
 * drift checks, the default rules) on the realistic mix (bench/mix.ts), in
 * batches as the sensor delivers them, on one core (this process's thread).
 * Drift candidates in the mix (2% of execs are on an upper layer) are
 * finished as in the agent: their pids do not exist, so they are recorded as
 * "exited before hashing". Run: npm run bench:detect
 */
import * as path from 'node:path';
import { startDetector } from '../src/detect/detector';
import { loadRules } from '../src/detect/rules';
import { Pipeline } from '../src/pipeline/pipeline';
import type { AmberEvent } from '../src/sensor/events';
import { realisticEvents } from './mix';
import { median } from './workloads';

const BATCH = 1024;
const EVENTS = 400_000;
const PASSES = 15;

async function main(): Promise<void> {
  const next = realisticEvents(1, Date.now() * 1e6, 1e6);
  const batches: AmberEvent[][] = [];
  for (let i = 0; i < EVENTS / BATCH; i++) batches.push(Array.from({ length: BATCH }, next));
  await run('realistic mix', batches);
  // The same mix without its drift (2% of its execs are on an upper layer: far more than a real node's)
  const noDrift = batches.map((b) => b.map((e) => (e.type === 'exec' && e.upperLayer ? { ...e, upperLayer: false } : e)));
  await run('the same mix, no drift candidates', noDrift);
}

async function run(label: string, batches: AmberEvent[][]): Promise<void> {
  const total = batches.length * BATCH;

  const rules = loadRules(path.join(__dirname, '..', '..', 'rules', 'default.yaml'), {
    lists: { blocklist_cidrs: ['203.0.113.0/24', '198.51.100.0/24', '2001:db8:bad::/48'] },
  });
  const pipeline = new Pipeline();
  let findings = 0;
  pipeline.addSink((events) => (findings += events.length));
  // A procRoot with no processes: the mix's pids are invented, and must not be looked up on this host.
  const detector = startDetector({ pipeline, rules, procRoot: '/nonexistent-proc' });

  const rates: number[] = [];
  for (let pass = 0; pass < PASSES; pass++) {
    const start = process.hrtime.bigint();
    for (const b of batches) detector.process(b);
    await detector.settled();
    const seconds = Number(process.hrtime.bigint() - start) / 1e9;
    rates.push(total / seconds);
  }
  detector.close();
  const s = detector.stats();
  console.log(`detector, default rules (${rules.names.length}), ${label}, batches of ${BATCH}, one core:`);
  console.log(`  ${(median(rates) / 1e6).toFixed(2)}M events/s median, ${(Math.max(...rates) / 1e6).toFixed(2)}M best, ${(Math.min(...rates) / 1e6).toFixed(2)}M worst (${PASSES} passes over ${total} events; the best pass is the least disturbed by other load)`);
  console.log(`  findings per pass: ${findings / PASSES} (drift ${s.drift / PASSES}, alerts ${s.alerts / PASSES}); processes in the table: ${s.processes}`);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
