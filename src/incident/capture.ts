/**
 * One incident's capture into a signed evidence bundle: the most volatile
 * first (memory, with the container's cgroup frozen; the executable), then
 * process facts, the container's tree and exposure, the upper layer, and
 * last the buffer's frozen window around the trigger (it waits for the
 * window's end). Every step is logged with its timing in capture.log.jsonl;
 * a step that fails is logged and the capture goes on: a partial bundle,
 * signed, beats none.
 */
import { createReadStream, promises as fsp } from 'node:fs';
import * as path from 'node:path';
import type { EventBuffer } from '../buffer';
import { EVENTS_JSONL, EVENTS_MSGPACK, FROZEN_DIR } from '../buffer/freeze';
import type { ContainerMetadata } from '../containers/metadata';
import { BundleWriter, type FinishedBundle } from './bundle';
import { copyExecutable } from './executable';
import { assessExposure } from './exposure';
import { CONTAINER_FILE, EXPOSURE_FILE, type ContainerFacts } from './facts-types';
import type { CgroupFreezer } from './freezer';
import type { Trigger } from './manifest';
import { dumpProcessMemory } from './memory';
import { collectProcessFacts, containerProcessTree, type ContainerProcessNode } from './process-facts';
import type { SigningKey } from './signing';
import { captureUpperLayer } from './upper-layer';
import { verifyBundle } from './verify';

export const CAPTURE_LOG = 'capture.log.jsonl';
/** Free bytes a capture leaves on the data dir's filesystem (memory cores are bounded by what is free beyond it). */
export const DISK_RESERVE_BYTES = 1024 ** 3;
export const UPPER_LAYER_FILE = 'upper-layer.tar';

export interface CaptureOptions {
  /** The frozen window: this long before the trigger and after it. */
  beforeMs: number;
  afterMs: number;
  memory: {
    enabled: boolean;
    /** Every process of the container, not only the trigger's. */
    allProcesses: boolean;
    /** Bound on the bytes of all cores of one incident together. */
    maxBytes: number;
    /** Freeze the container's cgroup while its memory is copied. */
    freeze: boolean;
  };
  upperLayer: { maxFileBytes: number; maxTotalBytes: number };
  executableMaxBytes: number;
  redactEnv: readonly string[];
  procRoot?: string;
  /** The cgroup v2 mount (the container's processes are its cgroup's). */
  cgroupRoot?: string;
  /** Processes described (facts, executables) at most. */
  maxProcesses: number;
}

export interface CaptureTarget {
  trigger: Trigger;
  /** ns since the epoch: the window's centre. */
  at: number;
  containerId: string;
  /** The process at the centre: the trigger's, or the container's init (0: none known). */
  pid: number;
  metadata: ContainerMetadata | null;
}

export interface CaptureParts {
  dataDir: string;
  node: string;
  version: string;
  buffer: EventBuffer;
  freezer: CgroupFreezer | null;
  key: SigningKey;
}

/** The signed, verified bundle directory; `archive` is where packBundle will put it. */
export interface CaptureResult extends FinishedBundle {
  /** What the capture skipped or could not do (also in the log artifact). */
  problems: string[];
  /** ms from the start to the signed, verified bundle; and how long the container was frozen. */
  durationMs: number;
  frozenMs: number;
  dumpedBytes: number;
}

type LogRecord = Record<string, unknown> & { step: string; msg: string };

/** Captures into a new bundle (already created: its id names the incident) and signs it. */
export async function capture(bundle: BundleWriter, target: CaptureTarget, options: CaptureOptions, parts: CaptureParts): Promise<CaptureResult> {
  const started = Date.now();
  const records: LogRecord[] = [];
  const problems: string[] = [];
  const log = (record: LogRecord) => records.push({ ms: Date.now() - started, ...record });
  const failed = (step: string, err: unknown) => {
    const message = err instanceof Error ? err.message : String(err);
    problems.push(`${step}: ${message}`);
    log({ step, msg: 'failed', error: message });
  };
  const step = async <T>(name: string, fn: () => Promise<T>): Promise<T | undefined> => {
    const t0 = Date.now();
    try {
      const result = await fn();
      log({ step: name, msg: 'done', durationMs: Date.now() - t0 });
      return result;
    } catch (err) {
      failed(name, err);
      return undefined;
    }
  };
  const procRoot = options.procRoot ?? '/proc';
  log({ step: 'start', msg: 'capture started', incident: bundle.id, containerId: target.containerId, pid: target.pid, trigger: target.trigger.kind });

  // the window is frozen first (the buffer pins it now) and exported when it ends, while the rest runs
  const filter = target.containerId ? { container: target.containerId } : target.pid ? { pid: target.pid } : {};
  const window = parts.buffer
    .freeze({ at: target.at, before: options.beforeMs * 1e6, after: options.afterMs * 1e6, reason: `incident ${bundle.id}`, filter })
    .then(
      (w) => ({ ok: true as const, w }),
      (err: unknown) => ({ ok: false as const, err }),
    );

  // the processes: the trigger's first, then (allProcesses) the rest of the container's tree
  const tree = await step('process-tree', async () => {
    if (!target.containerId || !target.metadata?.initPid) return [];
    const t = await containerProcessTree({ initPid: target.metadata.initPid }, { procRoot, cgroupRoot: options.cgroupRoot });
    for (const e of t.errors) log({ step: 'process-tree', msg: 'partial', error: e });
    return t.tree;
  });
  const treePids = flatten(tree ?? []);
  const alive = (pid: number) => pid > 0 && treePids.includes(pid);
  let pids = target.pid > 0 ? [target.pid] : [];
  if (target.pid > 0 && target.containerId && !alive(target.pid)) log({ step: 'processes', msg: 'the trigger process is gone', pid: target.pid });
  if (options.memory.allProcesses) pids = [...new Set([...pids, ...treePids])];
  if (pids.length === 0 && target.metadata?.initPid) pids = [target.metadata.initPid];
  if (pids.length > options.maxProcesses) {
    log({ step: 'processes', msg: 'too many processes: the rest are not described', kept: options.maxProcesses, of: pids.length });
    pids = pids.slice(0, options.maxProcesses);
  }

  let frozenMs = 0;
  let dumpedBytes = 0;
  if (options.memory.enabled) {
    // the cores are the bulk of a bundle: they never take the data dir's last free bytes (the buffer lives there too)
    const free = await freeBytes(parts.dataDir);
    let budget = Math.max(0, Math.min(options.memory.maxBytes, free - DISK_RESERVE_BYTES));
    if (budget < options.memory.maxBytes) log({ step: 'memory', msg: 'bound lowered: the disk is nearly full', freeBytes: free, reserveBytes: DISK_RESERVE_BYTES, maxBytes: budget });
    for (const pid of pids) {
      const result = await step(`memory ${pid}`, async () => {
        const corePath = await bundle.pathFor(`memory/${pid}.core`);
        const mapsPath = await bundle.pathFor(`memory/${pid}.maps.json`);
        const r = await dumpProcessMemory(pid, { corePath, mapsPath, maxBytes: budget, freezer: options.memory.freeze ? (parts.freezer ?? undefined) : undefined });
        await bundle.add(`memory/${pid}.core`, 'memory', pid);
        await bundle.add(`memory/${pid}.maps.json`, 'maps', pid);
        return r;
      });
      if (!result) continue;
      budget = Math.max(0, budget - result.dumpedBytes);
      dumpedBytes += result.dumpedBytes;
      frozenMs += result.frozen ? result.copyMs : 0;
      log({
        step: `memory ${pid}`,
        msg: 'dumped',
        comm: result.comm,
        bytes: result.bytes,
        dumpedBytes: result.dumpedBytes,
        threads: result.threads.length,
        skippedRegions: result.regions.filter((r) => r.skipped).map((r) => ({ start: r.start, end: r.end, path: r.path, skipped: r.skipped })),
        frozen: result.frozen,
        stopMs: result.stopMs,
        copyMs: result.copyMs,
      });
    }
  } else log({ step: 'memory', msg: 'skipped: incident.memory.enabled is off' });

  for (const pid of pids) {
    await step(`executable ${pid}`, async () => {
      const out = await bundle.pathFor(`executable/${pid}.exe`);
      const copy = await copyExecutable(pid, out, { maxBytes: options.executableMaxBytes, procRoot });
      if ('error' in copy) throw new Error(copy.error);
      await bundle.add(`executable/${pid}.exe`, 'executable', pid);
      log({ step: `executable ${pid}`, msg: 'copied', ...copy });
    });
    await step(`process ${pid}`, async () => {
      const facts = await collectProcessFacts(pid, { procRoot, redactEnv: options.redactEnv });
      await bundle.write(`process/${pid}.json`, 'process', `${JSON.stringify(facts, null, 2)}\n`, pid);
    });
  }

  await step('container', async () => {
    const facts: ContainerFacts = { metadata: target.metadata, tree: tree ?? [] };
    await bundle.write(CONTAINER_FILE, 'container', `${JSON.stringify(facts, null, 2)}\n`);
  });
  const exposurePid = pids[0] ?? 0;
  if (exposurePid > 0) {
    await step('exposure', async () => {
      const exposure = await assessExposure(exposurePid, { procRoot });
      for (const e of exposure.errors) log({ step: 'exposure', msg: 'partial', error: e });
      await bundle.write(EXPOSURE_FILE, 'exposure', `${JSON.stringify(exposure, null, 2)}\n`);
    });
  }

  const upperdir = target.metadata?.overlay?.upperdir;
  if (upperdir) {
    await step('upper-layer', async () => {
      const out = await bundle.pathFor(UPPER_LAYER_FILE);
      const r = await captureUpperLayer(upperdir, out, { ...options.upperLayer, log: (rec) => log({ step: 'upper-layer', ...rec }) });
      await bundle.add(UPPER_LAYER_FILE, 'upper-layer');
      log({ step: 'upper-layer', msg: 'captured', upperdir, ...r });
    });
  } else log({ step: 'upper-layer', msg: 'skipped: no overlay upper layer known for the container' });

  // the window: exported once it ended (afterMs), then copied in
  const frozen = await window;
  let windowFields = { from: target.at - options.beforeMs * 1e6, to: target.at + options.afterMs * 1e6, events: 0, complete: false };
  if (frozen.ok) {
    const w = frozen.w;
    windowFields = { from: w.from, to: w.to, events: w.count, complete: w.complete };
    await step('events', async () => {
      const src = path.join(parts.dataDir, FROZEN_DIR, w.id);
      for (const name of [EVENTS_MSGPACK, EVENTS_JSONL]) await bundle.write(name, 'events', createReadStream(path.join(src, name)));
      log({ step: 'events', msg: 'window copied', window: w.id, count: w.count, complete: w.complete });
    });
  } else failed('events', frozen.err);

  log({ step: 'sign', msg: 'signing', problems: problems.length });
  await bundle.write(CAPTURE_LOG, 'log', records.map((r) => `${JSON.stringify(r)}\n`).join(''));
  const finished = await bundle.finish(
    {
      createdAt: new Date(started).toISOString(),
      node: parts.node,
      trigger: target.trigger,
      container: target.containerId ? { id: target.containerId, metadata: target.metadata } : null,
      window: { ...windowFields, beforeMs: options.beforeMs, afterMs: options.afterMs },
    },
    parts.key,
    { pack: false }, // the caller packs the archive after the responses: it is for shipping, the directory is the evidence
  );
  // a bundle is handed over verified: every hash and the signature read back from disk
  const check = await verifyBundle(finished.dir, parts.key.publicKeyPem);
  if (!check.ok) throw new Error(`bundle ${finished.id} does not verify after writing: ${JSON.stringify(check.problems)}`);
  return { ...finished, problems, durationMs: Date.now() - started, frozenMs, dumpedBytes };
}

async function freeBytes(dir: string): Promise<number> {
  const st = await fsp.statfs(dir);
  return st.bavail * st.bsize;
}

function flatten(nodes: readonly ContainerProcessNode[]): number[] {
  return nodes.flatMap((n) => [n.pid, ...flatten(n.children as ContainerProcessNode[])]);
}
