/**
 * A readable account of an evidence bundle (directory or archive): the
 * trigger, container and pod, the process tree, the exposure, the artifacts
 * with their verify status, and the frozen events around the trigger. Every
 * field comes from a bundle that may have been tampered with: each is checked
 * for its type and cleaned before it reaches a terminal.
 */
import type { KeyObject } from 'node:crypto';
import { createHash } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as readline from 'node:readline';
import { createExclusive, openRegular, readRegular } from '../buffer/datadir';
import { EVENTS_JSONL } from '../buffer/freeze';
import { clean, columnsLayout, quoteArg } from '../cli/format';
import type { AmberEvent } from '../sensor/events';
import { formatHit, type CoreHit } from './core-grep';
import { MANIFEST_FILE, type Manifest } from './manifest';
import { CONTAINER_FILE, EXPOSURE_FILE, type ContainerFacts, type ExposureFacts, type ProcessNode } from './facts-types';
import { parsePublicKey } from './signing';
import type { TarEntry } from './tar';
import { entryParts, verifyArchive, verifyBundle, zeros, type VerifyResult } from './verify';

/** Lines of the timeline shown by default: half before the trigger, half after. */
export const DEFAULT_TIMELINE_LINES = 40;
/** Matches shown per core by --grep. */
export const DEFAULT_GREP_MATCHES = 20;
const MAX_FACTS_BYTES = 16 * 1024 * 1024;
const MAX_TREE_DEPTH = 64;
const MAX_TREE_NODES = 10_000;

/**
 * Searches one ELF core for `needle` (src/incident/core-grep.ts's grepCore):
 * each match a CoreHit (shown with formatHit), lines of text, or an object
 * shown as JSON. The maps beside the core (memory/<pid>.maps.json) are
 * there for it to name the regions.
 */
export type CoreGrep = (corePath: string, needle: string) => Promise<Iterable<unknown> | AsyncIterable<unknown>>;

export interface InspectOptions {
  /** The key to verify the signature with (PEM SPKI); null: the artifacts are checked, the signature is not. */
  publicKey: string | KeyObject | null;
  /** Timeline lines around the trigger (default DEFAULT_TIMELINE_LINES). */
  timelineLines?: number;
  /** Search each memory/<pid>.core for this text with `search`. */
  grep?: { needle: string; search: CoreGrep; maxMatches?: number };
}

export interface TimelineLine {
  /** ns relative to the trigger. */
  offsetNs: number;
  trigger: boolean;
  event: AmberEvent | null;
}

export interface Timeline {
  /** ns since the epoch the offsets are relative to: the trigger event's ts, else the window's centre. */
  referenceNs: number;
  /** Events in events.jsonl (lines that parse as events). */
  total: number;
  /** Lines that are not JSON events. */
  unreadable: number;
  /** The trigger's own event is among them (marked); false: a marker line stands at its time. */
  triggerFound: boolean;
  lines: TimelineLine[];
  /** Events before the first line and after the last one, not shown. */
  omittedBefore: number;
  omittedAfter: number;
}

export interface GrepResult {
  path: string;
  pid: number | null;
  matches: unknown[];
  /** Matches past maxMatches, not shown. */
  more: number;
  error?: string;
}

export interface BundleReport {
  /** The path inspected. */
  bundle: string;
  verify: VerifyResult;
  manifest: Manifest | null;
  container: ContainerFacts | null;
  exposure: ExposureFacts | null;
  timeline: Timeline | null;
  grep: GrepResult[] | null;
  /** Files inspect could not read or make sense of, in words. */
  notes: string[];
}

/** Reads and checks the bundle at `target` (a directory or a .tar.gz) into a report. */
export async function inspectBundle(target: string, options: InspectOptions): Promise<BundleReport> {
  const st = await fsp.stat(target);
  if (st.isDirectory()) return inspectFiles(target, await verifyBundle(target, options.publicKey), options, target);
  if (!st.isFile()) throw new Error(`${target}: not a bundle directory or archive`);
  // An archive is read once: verified as it streams, the few files inspect reads kept in a private temp dir.
  const tmp = await fsp.mkdtemp(path.join(os.tmpdir(), 'amber-inspect-'));
  try {
    const wanted = (rel: string) =>
      rel === CONTAINER_FILE || rel === EXPOSURE_FILE || rel === EVENTS_JSONL || (options.grep !== undefined && /^memory\/\d+\.(core|maps\.json)$/.test(rel));
    const key = typeof options.publicKey === 'string' ? parsePublicKey(options.publicKey, 'the public key') : options.publicKey;
    const verify = await verifyArchive(target, key, async (rel, entry) => {
      if (!wanted(rel)) return;
      const dir = path.join(tmp, path.dirname(rel));
      await fsp.mkdir(dir, { recursive: true, mode: 0o700 });
      return extractEntry(entry, path.join(tmp, rel));
    });
    return await inspectFiles(tmp, verify, options, target);
  } finally {
    await fsp.rm(tmp, { recursive: true, force: true });
  }
}

/**
 * Writes an archive entry to a new file (holes of a sparse entry left as
 * holes), hashing its whole content as it goes.
 */
async function extractEntry(entry: TarEntry, file: string): Promise<{ sha256: string; size: number }> {
  const hash = createHash('sha256');
  const fh = await createExclusive(file, 0o600);
  try {
    for await (const part of entryParts(entry)) {
      if (part.data) {
        hash.update(part.data);
        await fh.write(part.data, 0, part.data.length, part.offset);
      } else for (const z of zeros(part.hole)) hash.update(z);
    }
    await fh.truncate(entry.size);
    return { sha256: hash.digest('hex'), size: entry.size };
  } finally {
    await fh.close();
  }
}

async function inspectFiles(dir: string, verify: VerifyResult, options: InspectOptions, bundle: string): Promise<BundleReport> {
  const notes: string[] = [];
  const manifest = verify.manifest;
  const readJson = async (name: string): Promise<unknown> => {
    try {
      return JSON.parse((await readRegular(path.join(dir, name), MAX_FACTS_BYTES)).toString('utf8'));
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      notes.push(`${name}: ${code === 'ENOENT' ? 'not in the bundle' : (err as Error).message}`);
      return undefined;
    }
  };
  const containerJson = await readJson(CONTAINER_FILE);
  const exposureJson = await readJson(EXPOSURE_FILE);
  const container = containerJson === undefined ? null : readContainerFacts(containerJson, notes);
  const exposure = exposureJson === undefined ? null : readExposureFacts(exposureJson, notes);
  let timeline: Timeline | null = null;
  if (manifest) {
    try {
      timeline = await readTimeline(path.join(dir, EVENTS_JSONL), manifest, options.timelineLines ?? DEFAULT_TIMELINE_LINES);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      notes.push(`${EVENTS_JSONL}: ${code === 'ENOENT' ? 'not in the bundle' : (err as Error).message}`);
    }
  } else {
    notes.push(`${MANIFEST_FILE} cannot be read: no trigger, no timeline`);
  }
  let grep: GrepResult[] | null = null;
  if (options.grep && manifest) grep = await grepCores(dir, manifest, options.grep);
  return { bundle, verify, manifest, container, exposure, timeline, grep, notes };
}

async function grepCores(dir: string, manifest: Manifest, g: NonNullable<InspectOptions['grep']>): Promise<GrepResult[]> {
  const max = g.maxMatches ?? DEFAULT_GREP_MATCHES;
  const results: GrepResult[] = [];
  for (const a of manifest.artifacts) {
    if (a.kind !== 'memory' || !/^memory\/\d+\.core$/.test(a.path)) continue;
    const r: GrepResult = { path: a.path, pid: a.pid ?? null, matches: [], more: 0 };
    try {
      // the core was checked (a regular file, not a link) before it is handed to the search
      const fh = await openRegular(path.join(dir, a.path));
      await fh.close();
      for await (const m of await g.search(path.join(dir, a.path), g.needle)) {
        if (r.matches.length < max) r.matches.push(m);
        else r.more++;
      }
    } catch (err) {
      r.error = (err as Error).message;
    }
    results.push(r);
  }
  return results;
}

// ---------------------------------------------------------------- facts, read defensively

const isObj = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
const num = (v: unknown): number => (typeof v === 'number' && Number.isFinite(v) ? v : 0);
const text = (v: unknown): string => (typeof v === 'string' ? v : '');
const texts = (v: unknown): string[] => (Array.isArray(v) ? v.filter((x): x is string => typeof x === 'string') : []);

function readContainerFacts(v: unknown, notes: string[]): ContainerFacts | null {
  if (!isObj(v)) {
    notes.push(`${CONTAINER_FILE}: not an object`);
    return null;
  }
  let count = 0;
  const nodes = (list: unknown, depth: number): ProcessNode[] => {
    if (!Array.isArray(list)) return [];
    const out: ProcessNode[] = [];
    for (const n of list) {
      if (!isObj(n) || count >= MAX_TREE_NODES) continue;
      count++;
      out.push({
        pid: num(n.pid),
        ppid: num(n.ppid),
        comm: text(n.comm),
        exePath: text(n.exePath),
        args: texts(n.args),
        children: depth < MAX_TREE_DEPTH ? nodes(n.children, depth + 1) : [],
      });
    }
    return out;
  };
  if (!Array.isArray(v.tree)) notes.push(`${CONTAINER_FILE}: no process tree`);
  return { metadata: isObj(v.metadata) ? (v.metadata as unknown as ContainerFacts['metadata']) : null, tree: nodes(v.tree, 0) };
}

function readExposureFacts(v: unknown, notes: string[]): ExposureFacts | null {
  if (!isObj(v)) {
    notes.push(`${EXPOSURE_FILE}: not an object`);
    return null;
  }
  const caps = isObj(v.capabilities) ? v.capabilities : {};
  const ns = isObj(v.hostNamespaces) ? v.hostNamespaces : {};
  const seccomp = ['disabled', 'strict', 'filter'].includes(text(v.seccomp)) ? (v.seccomp as ExposureFacts['seccomp']) : 'unknown';
  const token = isObj(v.serviceAccountToken) ? v.serviceAccountToken : {};
  return {
    pid: num(v.pid),
    capabilities: {
      effective: texts(caps.effective),
      permitted: texts(caps.permitted),
      bounding: texts(caps.bounding),
      inheritable: texts(caps.inheritable),
      ambient: texts(caps.ambient),
    },
    privileged: v.privileged === true,
    seccomp,
    noNewPrivs: v.noNewPrivs === true,
    hostNamespaces: {
      pid: ns.pid === true,
      net: ns.net === true,
      ipc: ns.ipc === true,
      uts: ns.uts === true,
      mnt: ns.mnt === true,
      user: ns.user === true,
      cgroup: ns.cgroup === true,
    },
    sensitiveMounts: (Array.isArray(v.sensitiveMounts) ? v.sensitiveMounts : [])
      .filter(isObj)
      .map((m) => ({ path: text(m.path), source: text(m.source), reason: text(m.reason), writable: m.writable === true })),
    serviceAccountToken: { mounted: token.mounted === true, ...(typeof token.path === 'string' ? { path: token.path } : {}) },
  };
}

// ---------------------------------------------------------------- timeline

function sameEvent(a: Record<string, unknown>, b: Record<string, unknown> | undefined): boolean {
  return b !== undefined && a.type === b.type && a.ts === b.ts && a.pid === b.pid && a.tid === b.tid;
}

/**
 * The events of events.jsonl around the trigger, streamed: the last half of
 * `maxLines` before it, the trigger, the first half after it, the rest counted.
 */
export async function readTimeline(file: string, manifest: Manifest, maxLines: number): Promise<Timeline> {
  const trigger = manifest.trigger.event as Record<string, unknown> | undefined;
  const triggerTs = trigger && typeof trigger.ts === 'number' && Number.isFinite(trigger.ts) ? trigger.ts : undefined;
  const referenceNs = triggerTs ?? manifest.window.from + manifest.window.beforeMs * 1e6;
  const beforeCap = Math.max(0, Math.floor((maxLines - 1) / 2));
  const afterCap = Math.max(0, maxLines - 1 - beforeCap);
  const before: TimelineLine[] = [];
  const after: TimelineLine[] = [];
  let triggerLine: TimelineLine | null = null;
  let passed = false; // the trigger (or its time) is behind us
  let total = 0;
  let unreadable = 0;
  let omittedBefore = 0;
  let omittedAfter = 0;
  const fh = await openRegular(file);
  try {
    const lines = readline.createInterface({ input: fh.createReadStream({ encoding: 'utf8', autoClose: false }), crlfDelay: Infinity });
    for await (const line of lines) {
      if (line === '') continue;
      let ev: unknown;
      try {
        ev = JSON.parse(line);
      } catch {
        unreadable++;
        continue;
      }
      if (!isObj(ev) || typeof ev.ts !== 'number' || !Number.isFinite(ev.ts)) {
        unreadable++;
        continue;
      }
      total++;
      const l: TimelineLine = { offsetNs: ev.ts - referenceNs, trigger: false, event: ev as unknown as AmberEvent };
      if (!passed && triggerLine === null && sameEvent(ev, trigger)) {
        l.trigger = true;
        triggerLine = l;
        passed = true;
        continue;
      }
      if (!passed && ev.ts > referenceNs) passed = true;
      if (!passed) {
        before.push(l);
        if (before.length > beforeCap) {
          before.shift();
          omittedBefore++;
        }
      } else if (after.length < afterCap) after.push(l);
      else omittedAfter++;
    }
  } finally {
    await fh.close();
  }
  const mark = triggerLine ?? { offsetNs: 0, trigger: true, event: null };
  return { referenceNs, total, unreadable, triggerFound: triggerLine !== null, lines: [...before, mark, ...after], omittedBefore, omittedAfter };
}

/** "-2.301s", "+0.000s". */
export function formatOffset(ns: number): string {
  const s = (Math.abs(ns) / 1e9).toFixed(3);
  return `${ns < 0 && s !== '0.000' ? '-' : '+'}${s}s`;
}

// ---------------------------------------------------------------- text

const timelineLayout = columnsLayout(['pid', 'comm', 'type', 'details']);

/** The report as text for a terminal. */
export function formatReport(r: BundleReport): string {
  const out: string[] = [];
  const row = (label: string, value: string) => out.push(`  ${label.padEnd(11)}${value}`);
  const m = r.manifest;
  out.push(`Incident ${clean(m?.id ?? path.basename(r.bundle))}`);
  if (m) row('created', `${clean(m.createdAt)} on ${clean(m.node)} by ${clean(m.tool.name)} ${clean(m.tool.version)}`);
  row('verify', verifyLine(r.verify));
  for (const p of r.verify.problems) out.push(`             ${clean(p.path)}: ${p.problem}: ${clean(p.detail)}`);
  if (m) {
    const t = m.trigger;
    const rule = t.rule !== undefined ? ` (rule ${clean(t.rule)})` : '';
    const extra = [t.requestedBy ? `requested by ${clean(t.requestedBy)}` : '', t.joined ? `${t.joined} more joined` : ''].filter(Boolean).join(', ');
    row('trigger', `${clean(t.kind)}${rule}: ${clean(t.reason)}${extra ? `; ${extra}` : ''}`);
    if (t.event) row('event', timelineLayout.row(t.event).trimEnd());
    const md = r.container?.metadata ?? m.container?.metadata ?? null;
    if (m.container) {
      const parts = [md?.runtime && `runtime ${clean(md.runtime)}`, md?.name && `name ${clean(md.name)}`, md?.image && `image ${clean(md.image)}`].filter(Boolean);
      row('container', `${clean(m.container.id.slice(0, 12))}${parts.length ? `  ${parts.join(', ')}` : ''}`);
      if (md?.pod) row('pod', `${clean(text(md.pod.namespace))}/${clean(text(md.pod.name))}${md.pod.uid ? ` (uid ${clean(text(md.pod.uid))})` : ''}`);
    } else {
      row('container', 'none (a host process)');
    }
    const w = m.window;
    row('window', `${formatOffset(-w.beforeMs * 1e6)} .. ${formatOffset(w.afterMs * 1e6)} around the trigger, ${w.events} events${w.complete ? '' : ' (incomplete: the buffer closed first)'}`);
  }

  out.push('', 'Process tree');
  if (!r.container || r.container.tree.length === 0) out.push('  (none recorded)');
  else {
    const triggerPid = m?.trigger.event?.pid;
    const walk = (nodes: ProcessNode[], indent: string, top: boolean) => {
      nodes.forEach((n, i) => {
        const last = i === nodes.length - 1;
        const branch = top ? '' : last ? '└─ ' : '├─ ';
        const cmd = n.args.length ? n.args.map((a) => clean(quoteArg(a))).join(' ') : clean(n.exePath);
        const exe = n.exePath && n.args[0] !== n.exePath ? `  [${clean(n.exePath)}]` : '';
        out.push(`  ${indent}${branch}${n.pid} ${clean(n.comm)}  ${cmd}${exe}${n.pid === triggerPid ? '  <- trigger' : ''}`);
        walk(n.children, top ? indent : indent + (last ? '   ' : '│  '), false);
      });
    };
    walk(r.container.tree, '', true);
  }

  out.push('', `Exposure${r.exposure ? ` (pid ${r.exposure.pid})` : ''}`);
  const x = r.exposure;
  if (!x) out.push('  (none recorded)');
  else {
    const xrow = (label: string, value: string) => out.push(`  ${label.padEnd(23)}${value}`);
    xrow('privileged', x.privileged ? 'YES' : 'no');
    xrow('capabilities', x.capabilities.effective.length ? x.capabilities.effective.map(clean).join(', ') : 'none');
    xrow('seccomp', x.seccomp);
    xrow('no_new_privs', x.noNewPrivs ? 'yes' : 'no');
    const hostNs = Object.entries(x.hostNamespaces).filter(([, v]) => v).map(([k]) => k);
    xrow('host namespaces', hostNs.length ? hostNs.join(', ') : 'none');
    if (x.sensitiveMounts.length === 0) xrow('sensitive mounts', 'none');
    x.sensitiveMounts.forEach((s, i) =>
      xrow(i === 0 ? 'sensitive mounts' : '', `${clean(s.path)} <- ${clean(s.source)} (${s.writable ? 'rw' : 'ro'}): ${clean(s.reason)}`),
    );
    xrow('service account token', x.serviceAccountToken.mounted ? `mounted${x.serviceAccountToken.path ? ` at ${clean(x.serviceAccountToken.path)}` : ''}` : 'not mounted');
  }

  if (m) {
    const bytes = m.artifacts.reduce((s, a) => s + a.size, 0);
    out.push('', `Artifacts (${m.artifacts.length}, ${bytes} bytes)`);
    const paths = [...m.artifacts].sort((a, b) => (a.path < b.path ? -1 : 1));
    const width = Math.max(4, ...paths.map((a) => clean(a.path).length));
    out.push(`  ${'PATH'.padEnd(width)}  ${'KIND'.padEnd(11)}  ${'PID'.padStart(7)}  ${'SIZE'.padStart(12)}  CHECK`);
    const problemOf = new Map(r.verify.problems.map((p) => [p.path, p.problem]));
    for (const a of paths) {
      const check = r.verify.checked.find((c) => c.path === a.path);
      const status = check?.ok ? 'ok' : `FAILED (${problemOf.get(a.path) ?? 'not checked'})`;
      out.push(`  ${clean(a.path).padEnd(width)}  ${a.kind.padEnd(11)}  ${(a.pid !== undefined ? String(a.pid) : '').padStart(7)}  ${String(a.size).padStart(12)}  ${status}`);
    }
  }

  const tl = r.timeline;
  if (tl) {
    const shown = tl.lines.filter((l) => l.event !== null).length;
    out.push('', `Timeline (${EVENTS_JSONL}: ${tl.total} events, ${shown} shown; times relative to the trigger)`);
    if (tl.omittedBefore) out.push(`  … ${tl.omittedBefore} earlier events not shown`);
    for (const l of tl.lines) {
      const mark = l.trigger ? '>' : ' ';
      const body = l.event ? timelineLayout.row(l.event).trimEnd() : '(the trigger: not among the frozen events)';
      out.push(`${mark} ${formatOffset(l.offsetNs).padStart(9)}  ${body}${l.trigger && l.event ? '  <- trigger' : ''}`);
    }
    if (tl.omittedAfter) out.push(`  … ${tl.omittedAfter} later events not shown`);
    if (tl.unreadable) out.push(`  (${tl.unreadable} lines are not events and were skipped)`);
  }

  if (r.grep) {
    out.push('', 'Memory matches');
    if (r.grep.length === 0) out.push('  (no memory cores in the bundle)');
    for (const g of r.grep) {
      if (g.error) {
        out.push(`  ${clean(g.path)}: cannot search: ${clean(g.error)}`);
        continue;
      }
      out.push(`  ${clean(g.path)}: ${g.matches.length + g.more} match(es)`);
      for (const match of g.matches) {
        const text = typeof match === 'string' ? match : isCoreHit(match) ? formatHit(match) : JSON.stringify(match);
        for (const line of text.split('\n')) out.push(`    ${clean(line)}`);
      }
      if (g.more) out.push(`    … ${g.more} more`);
    }
  }
  if (r.notes.length) {
    out.push('', 'Notes');
    for (const n of r.notes) out.push(`  ${clean(n)}`);
  }
  return `${out.join('\n')}\n`;
}

const isCoreHit = (m: unknown): m is CoreHit =>
  isObj(m) && typeof m.address === 'string' && isObj(m.region) && Array.isArray(m.excerpt) && typeof m.pid === 'number';

function verifyLine(v: VerifyResult): string {
  const ok = v.checked.filter((c) => c.ok).length;
  const sig = `signature ${v.signature}${v.signature === 'unchecked' ? ' (no public key given)' : ''}`;
  if (v.ok) return `OK: ${ok} artifacts match the manifest, ${sig}`;
  const n = v.problems.length;
  return `${n ? `FAILED: ${n} problem${n === 1 ? '' : 's'}` : 'NOT VERIFIED'}; ${ok} of ${v.checked.length} artifacts match, ${sig}`;
}
