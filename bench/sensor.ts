/**
 * npm run bench:sensor — what recording costs the traced workload, side by
 * side in one run: no tracer, Amber's sensor (every event decoded in
 * JavaScript and counted, not printed), and bpftrace printing each event.
 * Rounds are interleaved and the median is reported: this machine is noisy.
 * Then, apart from the timed rounds (the kernel's run-time statistics cost
 * every program two clock reads), what each of the sensor's BPF programs
 * costs per run under each workload: run_time_ns / run_cnt from bpftool with
 * kernel.bpf_stats_enabled=1, restored afterwards.
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
const COST_ROUNDS = Number(process.env.AMBER_BENCH_COST_ROUNDS ?? 3);

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
  const sensor = await Sensor.start({ ignoreSelf: true }, (batch) => {
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

/** A loaded BPF program as `bpftool --json prog show` lists it. */
interface BpfProg {
  id: number;
  name?: string;
  run_time_ns?: number;
  run_cnt?: number;
}

function bpfPrograms(): BpfProg[] {
  return JSON.parse(execFileSync('bpftool', ['--json', 'prog', 'show'], { encoding: 'utf8' })) as BpfProg[];
}

/** Runs fn with kernel.bpf_stats_enabled=1, then puts back the value it found. */
async function withBpfStats<T>(fn: () => Promise<T>): Promise<T> {
  const sysctl = '/proc/sys/kernel/bpf_stats_enabled';
  const old = fs.readFileSync(sysctl, 'utf8').trim();
  fs.writeFileSync(sysctl, '1');
  try {
    return await fn();
  } finally {
    fs.writeFileSync(sysctl, old);
  }
}

/**
 * Nanoseconds per run of each of this sensor's programs while w runs, from
 * the counters' deltas. The sensor's programs are the amber_* programs that
 * appeared when it started (other sensors on the machine keep their ids).
 */
async function programCosts(w: Workload): Promise<Map<string, { nsPerRun: number; runs: number }>> {
  w.before?.();
  const before = new Set(bpfPrograms().map((p) => p.id));
  const sensor = await Sensor.start({ ignoreSelf: true }, () => undefined);
  const costs = new Map<string, { nsPerRun: number; runs: number }>();
  try {
    const names = new Set(sensor.programs());
    const start = new Map(bpfPrograms().filter((p) => !before.has(p.id) && names.has(p.name ?? '')).map((p) => [p.id, p]));
    await runChild(w.command[0], w.command.slice(1), w.cwd);
    for (const p of bpfPrograms()) {
      const p0 = start.get(p.id);
      if (!p0) continue;
      const runs = (p.run_cnt ?? 0) - (p0.run_cnt ?? 0);
      if (runs > 0) costs.set(p.name!, { nsPerRun: ((p.run_time_ns ?? 0) - (p0.run_time_ns ?? 0)) / runs, runs });
    }
  } finally {
    await sensor.stop();
  }
  return costs;
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
  const m = /amber: (\d+) events, \d+ written; drops: (.*)$/m.exec(stderr);
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
  const { openStorm, execStorm, syscallStorm } = compileWorkloads();
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

  // only in the per-program costs: the floor every syscall of the node pays
  const otherSyscalls: Workload = {
    name: 'other syscalls (getppid)',
    unit: 'syscalls',
    count: OPENS,
    command: [syscallStorm, String(OPENS)],
    bpftrace: '',
  };

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
        verdicts.push(`open storm: time ${ratio.toFixed(3)}x of no tracer (target <= 1.25x): ${ratio <= 1.25 ? 'met' : 'MISSED'}`);
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

  // per-program costs, apart from the timed rounds: median ns/run of COST_ROUNDS
  const costWorkloads = [...workloads, otherSyscalls];
  const costs = new Map<string, Map<string, { nsPerRun: number; runs: number }>[]>();
  await withBpfStats(async () => {
    for (let round = 0; round < COST_ROUNDS; round++) {
      for (const w of costWorkloads) costs.set(w.name, [...(costs.get(w.name) ?? []), await programCosts(w)]);
    }
  });
  console.log(
    `\nBPF programs, ns per run (run_time_ns / run_cnt, kernel.bpf_stats_enabled=1; median of ${COST_ROUNDS}; ` +
      'each figure includes the statistics\' own clock reads, which is what amber_sys_exit costs on syscalls it does not record):\n',
  );
  const programs = [...new Set(costWorkloads.flatMap((w) => costs.get(w.name)!.flatMap((m) => [...m.keys()])))].sort();
  console.log(`${'workload'.padEnd(31)}${programs.map((p) => p.padStart(20)).join('')}`);
  for (const w of costWorkloads) {
    const cells = programs.map((p) => {
      const xs = costs.get(w.name)!.map((m) => m.get(p)).filter((c) => c !== undefined);
      if (xs.length === 0) return '-'.padStart(20);
      const ns = median(xs.map((c) => c.nsPerRun));
      const runs = median(xs.map((c) => c.runs));
      return `${ns.toFixed(0)} ns x${fmtRate(runs)}`.padStart(20);
    });
    console.log(`${w.name.padEnd(31)}${cells.join('')}`);
  }
}

main().catch((err) => {
  console.error(err);
  process.exitCode = 1;
});
