/**
 * npm run bench:sensor — what recording costs the traced workload, side by
 * side in one run: no tracer, Amber's sensor (every event decoded in
 * JavaScript and counted, not printed), and bpftrace printing each event.
 * Rounds are interleaved and the median is reported: this machine is noisy.
 */
import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import type { AmberEvent } from '../src/sensor/events';
import { countTotal, Sensor } from '../src/sensor/sensor';
import { compileWorkloads, median, ROOT, runChild, WORK } from './workloads';
const ROUNDS = Number(process.env.AMBER_BENCH_ROUNDS ?? 3);
const OPENS = Number(process.env.AMBER_BENCH_OPENS ?? 1_000_000);
const EXECS = Number(process.env.AMBER_BENCH_EXECS ?? 2000);
const BUILD_FILES = Number(process.env.AMBER_BENCH_BUILD_FILES ?? 400);

type Tracer = 'none' | 'amber' | 'trace-json' | 'bpftrace';
const TRACERS: Tracer[] = ['none', 'amber', 'trace-json', 'bpftrace'];

interface Workload {
  name: string;
  unit: string;
  /** Work items (opens, execs, compiled files). */
  count: number;
  command: [string, ...string[]];
  cwd?: string;
  before?: () => void;
  bpftrace: string;
  /** The sensor's events that this workload generated (the storms mark theirs). */
  ours?: (e: AmberEvent, pid: number) => boolean;
}

interface Result {
  seconds: number;
  received?: number;
  drops?: number;
  consumerCpuSeconds?: number;
  events?: number;
}

/** A C project of BUILD_FILES files, built with make -j2: thousands of execs and opens. */
function makeProject(): string {
  const dir = path.join(WORK, 'project');
  fs.rmSync(dir, { recursive: true, force: true });
  fs.mkdirSync(dir, { recursive: true });
  const objs: string[] = [];
  for (let i = 0; i < BUILD_FILES; i++) {
    fs.writeFileSync(
      path.join(dir, `unit${i}.c`),
      `#include <stdio.h>\n#include <stdlib.h>\n#include <string.h>\n#include <math.h>\n` +
        `int unit${i}(int n) { char b[64]; int s = 0; for (int k = 0; k < n; k++) { snprintf(b, sizeof b, "%d", k * ${i}); s += (int)strlen(b) + (int)sqrt((double)k); } return s; }\n`,
    );
    objs.push(`unit${i}.o`);
  }
  fs.writeFileSync(path.join(dir, 'main.c'), `int main(void) { return 0; }\n`);
  fs.writeFileSync(
    path.join(dir, 'Makefile'),
    `OBJS = main.o ${objs.join(' ')}\nprog: $(OBJS)\n\tcc -o $@ $(OBJS) -lm\n%.o: %.c\n\tcc -O1 -c $< -o $@\nclean:\n\trm -f prog *.o\n`,
  );
  return dir;
}

/** bpftrace printing every event to /dev/null; resolves once its probes are attached. */
async function startBpftrace(program: string): Promise<() => Promise<void>> {
  const child = spawn('bpftrace', ['-e', program], { stdio: ['ignore', 'pipe', 'pipe'] });
  await new Promise<void>((resolve, reject) => {
    let seen = '';
    child.once('exit', (code) => reject(new Error(`bpftrace exited (${code}): ${seen}`)));
    const onData = (d: Buffer) => {
      seen += d.toString();
      if (seen.includes('Attaching')) {
        child.stdout!.removeAllListeners('data');
        child.stdout!.resume(); // keep draining: its output is the cost being measured
        setTimeout(resolve, 500);
      }
    };
    child.stdout!.on('data', onData);
    child.stderr!.on('data', (d: Buffer) => (seen += d.toString()));
  });
  child.removeAllListeners('exit');
  return () =>
    new Promise<void>((resolve) => {
      child.once('exit', () => resolve());
      child.kill('SIGINT');
    });
}

/** bpftrace's tracepoint:syscalls probes need tracefs; mount it for the bench if the host has not. */
function ensureTracefs(): () => void {
  const mounted = fs.readFileSync('/proc/self/mountinfo', 'utf8').includes(' - tracefs ');
  if (mounted) return () => {};
  execFileSync('mount', ['-t', 'tracefs', 'tracefs', '/sys/kernel/tracing']);
  return () => execFileSync('umount', ['/sys/kernel/tracing']);
}

async function measure(w: Workload, tracer: Tracer): Promise<Result> {
  w.before?.();
  if (tracer === 'none') return { seconds: (await runChild(w.command[0], w.command.slice(1), w.cwd)).seconds };
  if (tracer === 'bpftrace') {
    const stop = await startBpftrace(w.bpftrace);
    try {
      return { seconds: (await runChild(w.command[0], w.command.slice(1), w.cwd)).seconds };
    } finally {
      await stop();
    }
  }
  if (tracer === 'trace-json') return traceJsonToFile(w);
  let events = 0;
  let received = 0;
  let pid = -1;
  const ours = w.ours;
  // Counted as they arrive: keeping them would measure the bench's memory, not the sensor.
  const sensor = await Sensor.start({ ignoreTgid: process.pid }, (batch) => {
    events += batch.length;
    if (ours) for (const e of batch) if (ours(e, pid)) received++;
  });
  const cpu0 = process.cpuUsage();
  let run: { pid: number; seconds: number };
  try {
    run = await runChild(w.command[0], w.command.slice(1), w.cwd, (p) => (pid = p));
  } finally {
    await sensor.stop();
  }
  const cpu = process.cpuUsage(cpu0);
  const stats = sensor.stats();
  return {
    seconds: run.seconds,
    received,
    drops: countTotal(stats.drops),
    consumerCpuSeconds: (cpu.user + cpu.system) / 1e6,
    events,
  };
}

/**
 * What a user who records to a file pays: `amber trace all --local -o json > file`,
 * the built CLI in its own process; the storm's events are then counted in the file.
 */
async function traceJsonToFile(w: Workload): Promise<Result> {
  const file = path.join(WORK, 'trace.json');
  const fd = fs.openSync(file, 'w');
  const child = spawn(process.execPath, [path.join(ROOT, 'dist/src/cli/main.js'), 'trace', 'all', '--local', '-o', 'json'], {
    stdio: ['ignore', fd, 'pipe'],
  });
  fs.closeSync(fd);
  let stderr = '';
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  await new Promise<void>((resolve, reject) => {
    child.stderr!.on('data', (d: Buffer) => {
      stderr += d.toString();
      if (stderr.includes('amber: tracing')) resolve();
    });
    void exited.then(() => reject(new Error(`amber trace exited early: ${stderr}`)));
  });
  let pid = -1;
  let run: { pid: number; seconds: number };
  try {
    run = await runChild(w.command[0], w.command.slice(1), w.cwd, (p) => (pid = p));
  } finally {
    child.kill('SIGINT');
  }
  if ((await exited) !== 0) throw new Error(`amber trace failed: ${stderr}`);
  const m = /amber: (\d+) events; drops: (.*)$/m.exec(stderr);
  const drops = m ? m[2].split(' ').reduce((n, kv) => n + Number(kv.split('=')[1]), 0) : NaN;
  let received = 0;
  let events = 0;
  const lines = readline.createInterface({ input: fs.createReadStream(file), crlfDelay: Infinity });
  for await (const line of lines) {
    events++;
    if (w.ours && w.ours(JSON.parse(line) as AmberEvent, pid)) received++;
  }
  fs.rmSync(file);
  return { seconds: run.seconds, received, drops, events };
}

function fmtRate(n: number): string {
  return n >= 1e6 ? `${(n / 1e6).toFixed(2)}M` : n >= 1e3 ? `${(n / 1e3).toFixed(1)}K` : n.toFixed(1);
}

async function main(): Promise<void> {
  const { openStorm, execStorm } = compileWorkloads();
  const project = makeProject();
  const workloads: Workload[] = [
    {
      name: 'open storm',
      unit: 'opens',
      count: OPENS,
      command: [openStorm, String(OPENS)],
      bpftrace: 'tracepoint:syscalls:sys_enter_openat { printf("%d %s %s\\n", pid, comm, str(args->filename)); }',
      // after its exec: the spawning child opens /dev/null for its stdio first
      ours: (e, pid) => e.type === 'open' && e.pid === pid && e.comm === 'open-storm' && e.path === '/dev/null',
    },
    {
      name: 'exec storm',
      unit: 'execs',
      count: EXECS,
      command: [execStorm, String(EXECS)],
      bpftrace: 'tracepoint:sched:sched_process_exec { printf("%d %s %s\\n", pid, comm, str(args->filename)); }',
      ours: (e, pid) => e.type === 'exec' && e.ppid === pid && e.args[1] === 'amber-bench',
    },
    {
      name: `build (make -j2, ${BUILD_FILES + 1} files)`,
      unit: 'files',
      count: BUILD_FILES + 1,
      command: ['make', '-s', '-j2', 'prog'],
      cwd: project,
      before: () => execFileSync('make', ['-s', 'clean'], { cwd: project }),
      bpftrace:
        'tracepoint:sched:sched_process_exec { printf("%d %s %s\\n", pid, comm, str(args->filename)); } ' +
        'tracepoint:syscalls:sys_enter_openat { printf("%d %s %s\\n", pid, comm, str(args->filename)); }',
    },
  ];

  const unmountTracefs = ensureTracefs();
  const results = new Map<string, Result[]>();
  try {
    // warm-up: page cache, compiler binaries
    await measure(workloads[2], 'none');
    for (let round = 0; round < ROUNDS; round++) {
      for (const w of workloads) {
        for (const t of TRACERS) {
          const r = await measure(w, t);
          const key = `${w.name}|${t}`;
          results.set(key, [...(results.get(key) ?? []), r]);
          process.stderr.write(`round ${round + 1}/${ROUNDS} ${w.name} ${t}: ${r.seconds.toFixed(3)} s\n`);
        }
      }
    }
  } finally {
    unmountTracefs();
  }

  console.log(`\nAmber sensor bench — ${os.cpus().length} CPUs, kernel ${os.release()}, median of ${ROUNDS} interleaved rounds\n`);
  console.log('workload                       tracer     seconds   rate/s     time vs none   received/generated   drops   consumer CPU');
  const verdicts: string[] = [];
  for (const w of workloads) {
    const base = median(results.get(`${w.name}|none`)!.map((r) => r.seconds));
    for (const t of TRACERS) {
      const rs = results.get(`${w.name}|${t}`)!;
      const secs = median(rs.map((r) => r.seconds));
      const ratio = secs / base;
      const mid = rs.find((r) => r.seconds === secs)!;
      const counted = t === 'amber' || t === 'trace-json';
      const recv = counted && w.ours ? `${Math.min(...rs.map((r) => r.received!))}/${w.count}` : counted ? `${mid.events} events` : '';
      const drops = counted ? String(Math.max(...rs.map((r) => r.drops!))) : '';
      const cpu = t === 'amber' ? `${mid.consumerCpuSeconds!.toFixed(2)} s` : '';
      console.log(
        `${w.name.padEnd(31)}${t.padEnd(11)}${secs.toFixed(3).padStart(7)}   ${fmtRate(w.count / secs).padEnd(10)} ${ratio.toFixed(3).padStart(6)}x        ${recv.padEnd(21)}${drops.padEnd(8)}${cpu}`,
      );
      if (t === 'amber' && w.name === 'open storm') {
        const allReceived = rs.every((r) => r.received === w.count);
        const noDrops = rs.every((r) => r.drops === 0);
        verdicts.push(`open storm: time ${ratio.toFixed(3)}x of no tracer (target <= 1.3x): ${ratio <= 1.3 ? 'met' : 'MISSED'}`);
        verdicts.push(`open storm: every event received, zero drops in every round: ${allReceived && noDrops ? 'met' : 'MISSED'}`);
      }
      if (t === 'trace-json' && w.name === 'open storm') {
        verdicts.push(`open storm, amber trace -o json > file: time ${ratio.toFixed(3)}x of no tracer; every event in the file, zero drops: ${rs.every((r) => r.received === w.count && r.drops === 0) ? 'yes' : 'NO'}`);
      }
      if (t === 'amber' && w.name === 'exec storm') {
        verdicts.push(`exec storm: every exec received in every round: ${rs.every((r) => r.received === w.count) ? 'met' : 'MISSED'}`);
      }
      if (t === 'amber' && w.name.startsWith('build')) {
        const overhead = (ratio - 1) * 100;
        verdicts.push(`build: wall-time overhead ${overhead.toFixed(1)}% (target < 3%): ${overhead < 3 ? 'met' : 'MISSED'}`);
      }
    }
  }
  console.log(`\n${verdicts.join('\n')}`);
}

main().catch((err) => {
  console.error(err);
  process.exitCode = 1;
});
