/**
 * The rule set (YAML): which events are only recorded, which raise an `alert`
 * finding and which open an `incident`. Compiled once into predicates indexed
 * by event type; a rule's cheap tests (type, scope, strings) run before those
 * that look things up (container metadata, the process table).
 * The format is documented in README.md ("Drift and rules") and rules/default.yaml.
 */
import { existsSync, readFileSync } from 'node:fs';
import * as path from 'node:path';
import { BlockList, isIPv4, isIPv6 } from 'node:net';
import { parseDocument } from 'yaml';
import { z } from 'zod';
import type { ContainerMetadata } from '../containers/metadata';
import { type Action, type AmberEvent, EVENT_TYPES, type EventType } from '../sensor/events';
import { compileGlobs, type StringMatcher } from './glob';
import type { ProcessTable } from './process-table';

/** The shipped rule file (rules/default.yaml at the package's top), from src/detect or dist/src/detect. */
export function defaultRulesFile(): string {
  const candidates = [path.resolve(__dirname, '..', '..', 'rules', 'default.yaml'), path.resolve(__dirname, '..', '..', '..', 'rules', 'default.yaml')];
  return candidates.find((f) => existsSync(f)) ?? candidates[0];
}

export const ACTIONS = ['record', 'alert', 'incident'] as const satisfies readonly Action[];

/** Responses an incident rule may ask for, after the capture: freeze the container, kill it, or cut its network. */
export const RESPONSES = ['freeze', 'kill', 'cut-network'] as const;
export type Response = (typeof RESPONSES)[number];
const ACTION_RANK: Record<Action, number> = { record: 0, alert: 1, incident: 2 };

/** A list of globs (or CIDRs, ports): one string is a list of one; "$name" expands the named list. */
const strings = z.union([z.string().min(1), z.array(z.string().min(1)).min(1)]).transform((v) => (Array.isArray(v) ? v : [v]));
const ports = z
  .union([z.number().int().min(0).max(65535), z.array(z.union([z.number().int().min(0).max(65535), z.string().min(1)])).min(1)])
  .transform((v) => (Array.isArray(v) ? v : [v]));

const processSchema = z.object({ comm: strings.optional(), exe: strings.optional() }).strict();

const matchSchema = z
  .object({
    /** Event types; required in `match`, inherited by exceptions. */
    type: z.union([z.enum(EVENT_TYPES), z.array(z.enum(EVENT_TYPES)).min(1)]).transform((v) => (Array.isArray(v) ? v : [v])).optional(),
    /** containers (default), host, or all. */
    scope: z.enum(['containers', 'host', 'all']).optional(),
    container: z
      .object({ name: strings.optional(), image: strings.optional(), pod: strings.optional(), namespace: strings.optional() })
      .strict()
      .optional(),
    comm: strings.optional(),
    /** exec and drift: the executable (exePath); other events: the process's executable from the process table. */
    exe: strings.optional(),
    /** open: path; exec: filename or script; drift: the drifted path. */
    path: strings.optional(),
    /** exec and drift: the arguments joined with spaces. */
    args: strings.optional(),
    dns: z
      .object({
        name: strings.optional(),
        qr: z.enum(['Q', 'R']).optional(),
        /** An answer of one of these types (and, with minBytes, at least that long in presentation form). */
        answerType: strings.optional(),
        minAnswerBytes: z.number().int().min(0).optional(),
      })
      .strict()
      .optional(),
    /** connect, accept, dns: the remote end (daddr/dport). */
    remote: z.object({ cidr: strings.optional(), port: ports.optional() }).strict().optional(),
    open: z
      .object({
        /** true: opened for writing (O_WRONLY, O_RDWR, O_CREAT or O_TRUNC); false: read only. */
        write: z.boolean().optional(),
        /** All of these flag names (O_CREAT, ...). */
        flags: strings.optional(),
        /** true: the open succeeded; false: it failed. */
        succeeded: z.boolean().optional(),
      })
      .strict()
      .optional(),
    parent: processSchema.optional(),
    /** Any ancestor (parent, grandparent, ... up to 16 up). */
    ancestor: processSchema.optional(),
    drift: z
      .object({
        reason: strings.optional(),
        change: strings.optional(),
        subject: strings.optional(),
      })
      .strict()
      .optional(),
  })
  .strict();

const ruleSchema = z
  .object({
    name: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9_.-]*$/, 'letters, digits, "_", "-", "." only'),
    description: z.string().optional(),
    action: z.enum(ACTIONS),
    /** false: kept in the file but not compiled. */
    enabled: z.boolean().optional(),
    match: matchSchema,
    /** Allow list: a match that also matches one of these is suppressed. */
    except: z.array(matchSchema).optional(),
    /** What the incident it opens does to the container after the capture (action incident only; none by default). */
    respond: z.array(z.enum(RESPONSES)).optional(),
  })
  .strict()
  .refine((r) => !r.respond?.length || r.action === 'incident', { message: 'respond needs action: incident', path: ['respond'] });

const fileSchema = z
  .object({
    version: z.literal(1),
    /** Named lists, referenced as "$name" in any list field; the config may override them. */
    lists: z.record(z.string().regex(/^[A-Za-z0-9_]+$/), z.array(z.union([z.string(), z.number()]))).optional(),
    rules: z.array(ruleSchema),
  })
  .strict();

type MatchSpec = z.infer<typeof matchSchema>;
type RuleSpec = z.infer<typeof ruleSchema>;

export class RuleError extends Error {}

/** What the rules need to look up while matching. */
export interface RuleContext {
  processes: ProcessTable;
  container(containerId: string): ContainerMetadata | undefined;
}

export interface Decision {
  action: Action;
  rules: string[];
}

type Predicate = (ev: AmberEvent, ctx: RuleContext) => boolean;

interface CompiledRule {
  name: string;
  action: Action;
  types: readonly EventType[];
  match: Predicate;
  except: Predicate[];
}

export interface RuleSet {
  readonly file: string;
  readonly names: readonly string[];
  /** The decision for one event: null when no rule matched (the common case: no allocation). */
  evaluate(ev: AmberEvent, ctx: RuleContext): Decision | null;
  /** Whether any rule looks at events of this type. */
  wants(type: EventType): boolean;
  /** The responses the named rules ask for together, in RESPONSES order. */
  responses(ruleNames: readonly string[]): Response[];
}

export interface CompileOptions {
  /** Replace the file's named lists (the config's blocklists). */
  lists?: Record<string, readonly (string | number)[]>;
}

export function loadRules(file: string, options: CompileOptions = {}): RuleSet {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new RuleError(`${file}: cannot read the rule file: ${(err as Error).message}`);
  }
  return compileRules(text, file, options);
}

export function compileRules(yamlText: string, fileName: string, options: CompileOptions = {}): RuleSet {
  const doc = parseDocument(yamlText, { prettyErrors: true });
  if (doc.errors.length > 0) throw new RuleError(`${fileName}: invalid YAML: ${doc.errors[0].message}`);
  const raw: unknown = doc.toJS();
  const parsed = fileSchema.safeParse(raw);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw new RuleError(`${fileName}: ${where(raw, issue.path)}: ${issue.message}`);
  }
  const lists = new Map<string, string[]>();
  for (const [k, v] of Object.entries(parsed.data.lists ?? {})) lists.set(k, v.map(String));
  for (const [k, v] of Object.entries(options.lists ?? {})) lists.set(k, v.map(String));

  const seen = new Set<string>();
  const rules: CompiledRule[] = [];
  parsed.data.rules.forEach((spec, i) => {
    const at = `rule "${spec.name}"`;
    if (seen.has(spec.name)) throw new RuleError(`${fileName}: rules[${i}] (${at}): name: another rule has this name`);
    seen.add(spec.name);
    if (spec.enabled === false) return;
    try {
      rules.push(compileRule(spec, lists));
    } catch (err) {
      if (err instanceof FieldError) throw new RuleError(`${fileName}: ${at}: ${err.field}: ${err.message}`);
      throw err;
    }
  });

  const byType = new Map<string, CompiledRule[]>();
  for (const t of EVENT_TYPES) byType.set(t, rules.filter((r) => r.types.includes(t)));
  const names = rules.map((r) => r.name);
  const respond = new Map(parsed.data.rules.map((r) => [r.name, r.respond ?? []]));
  return {
    file: fileName,
    names,
    wants: (type) => (byType.get(type)?.length ?? 0) > 0,
    responses: (ruleNames) => RESPONSES.filter((k) => ruleNames.some((n) => respond.get(n)?.includes(k))),
    evaluate(ev, ctx) {
      const candidates = byType.get(ev.type);
      if (candidates === undefined) return null;
      let decision: Decision | null = null;
      for (let i = 0; i < candidates.length; i++) {
        const r = candidates[i];
        if (!r.match(ev, ctx)) continue;
        let excepted = false;
        for (let j = 0; j < r.except.length && !excepted; j++) excepted = r.except[j](ev, ctx);
        if (excepted) continue;
        if (decision === null) decision = { action: r.action, rules: [r.name] };
        else {
          decision.rules.push(r.name);
          if (ACTION_RANK[r.action] > ACTION_RANK[decision.action]) decision.action = r.action;
        }
      }
      return decision;
    },
  };
}

/** "rules[2] (rule "x"): match.dns.name" from a zod path. */
function where(raw: unknown, path: readonly PropertyKey[]): string {
  if (path[0] === 'rules' && typeof path[1] === 'number') {
    const rule = (raw as { rules?: unknown[] }).rules?.[path[1]] as { name?: unknown } | undefined;
    const name = typeof rule?.name === 'string' ? `rule "${rule.name}"` : `rules[${path[1]}]`;
    const field = path.slice(2).map(String).join('.');
    return field ? `${name}: ${field}` : name;
  }
  return path.map(String).join('.') || '(top level)';
}

class FieldError extends Error {
  constructor(
    readonly field: string,
    message: string,
  ) {
    super(message);
  }
}

function compileRule(spec: RuleSpec, lists: Map<string, string[]>): CompiledRule {
  if (!spec.match.type) throw new FieldError('match.type', 'required: the event types the rule is about');
  const types = spec.match.type;
  return {
    name: spec.name,
    action: spec.action,
    types,
    match: compileMatch(spec.match, 'match', lists, types),
    except: (spec.except ?? []).map((m, i) => compileMatch(m, `except[${i}]`, lists, types)),
  };
}

const WRITE_FLAGS = 0o1 | 0o2 | 0o100 | 0o1000; // O_WRONLY | O_RDWR | O_CREAT | O_TRUNC

function compileMatch(m: MatchSpec, at: string, lists: Map<string, string[]>, ruleTypes: readonly EventType[]): Predicate {
  const expand = (values: readonly string[], field: string): string[] => {
    const out: string[] = [];
    for (const v of values) {
      if (v.startsWith('$')) {
        const list = lists.get(v.slice(1));
        if (!list) throw new FieldError(`${at}.${field}`, `no list named "${v.slice(1)}"`);
        out.push(...list);
      } else out.push(v);
    }
    return out;
  };
  const globs = (values: readonly string[] | undefined, field: string): StringMatcher | undefined =>
    values === undefined ? undefined : compileGlobs(expand(values, field));
  const types = m.type;
  if (types && at !== 'match') {
    const outside = types.filter((t) => !ruleTypes.includes(t));
    if (outside.length) throw new FieldError(`${at}.type`, `${outside.join(', ')} is not among the rule's types`);
  }
  const needs = (field: string, allowed: readonly EventType[]) => {
    const bad = (types ?? ruleTypes).filter((t) => !allowed.includes(t));
    if (bad.length) throw new FieldError(`${at}.${field}`, `does not apply to ${bad.join(', ')} events (only ${allowed.join(', ')})`);
  };
  const tests: Predicate[] = [];
  if (types && at !== 'match') {
    const set = new Set<string>(types);
    tests.push((ev) => set.has(ev.type));
  }
  // Scope: a match is about container processes unless it says otherwise; an exception about any.
  const scope = m.scope ?? (at === 'match' ? 'containers' : 'all');
  if (scope === 'containers') tests.push((ev) => ev.containerId !== '');
  else if (scope === 'host') tests.push((ev) => ev.containerId === '');

  const comm = globs(m.comm, 'comm');
  if (comm) tests.push((ev) => comm(ev.comm));

  // flags first: cheaper than the path, and they rule out most opens
  if (m.open) {
    needs('open', ['open']);
    const { write, succeeded } = m.open;
    const flags = m.open.flags ? expand(m.open.flags, 'open.flags') : undefined;
    if (write !== undefined) tests.push((ev) => ev.type === 'open' && ((ev.flags & WRITE_FLAGS) !== 0) === write);
    if (succeeded !== undefined) tests.push((ev) => ev.type === 'open' && ev.ret >= 0 === succeeded);
    if (flags) tests.push((ev) => ev.type === 'open' && flags.every((f) => ev.flagNames.includes(f)));
  }
  const path = globs(m.path, 'path');
  if (path) {
    needs('path', ['open', 'exec', 'drift']);
    tests.push((ev) => {
      if (ev.type === 'open') return path(ev.path);
      if (ev.type === 'exec') return path(ev.filename) || (ev.script !== '' && path(ev.script));
      if (ev.type === 'drift') return path(ev.path);
      return false;
    });
  }
  const args = globs(m.args, 'args');
  if (args) {
    needs('args', ['exec', 'drift']);
    tests.push((ev) => (ev.type === 'exec' ? args(ev.args.join(' ')) : ev.type === 'drift' ? args(ev.exec.args.join(' ')) : false));
  }
  if (m.dns) {
    needs('dns', ['dns']);
    const name = globs(m.dns.name, 'dns.name');
    const qr = m.dns.qr;
    const answerType = globs(m.dns.answerType, 'dns.answerType');
    const minBytes = m.dns.minAnswerBytes;
    if (name) tests.push((ev) => ev.type === 'dns' && name(ev.name));
    if (qr) tests.push((ev) => ev.type === 'dns' && ev.qr === qr);
    if (answerType || minBytes !== undefined) {
      tests.push((ev) => {
        if (ev.type !== 'dns') return false;
        for (const a of ev.answers) {
          if (answerType && !answerType(a.type)) continue;
          if (minBytes !== undefined && a.data.length < minBytes) continue;
          return true;
        }
        return false;
      });
    }
  }
  if (m.remote) {
    needs('remote', ['connect', 'accept', 'dns']);
    if (m.remote.cidr) {
      const inCidrs = compileCidrs(expand(m.remote.cidr, 'remote.cidr'), `${at}.remote.cidr`);
      tests.push((ev) => {
        if (ev.type !== 'connect' && ev.type !== 'accept' && ev.type !== 'dns') return false;
        return inCidrs(ev.daddr, ev.family);
      });
    }
    if (m.remote.port) {
      const set = new Set<number>();
      for (const p of m.remote.port) {
        for (const v of typeof p === 'string' ? expand([p], 'remote.port') : [String(p)]) {
          const n = Number(v);
          if (!(Number.isInteger(n) && n >= 0 && n <= 65535)) throw new FieldError(`${at}.remote.port`, `"${v}" is not a port`);
          set.add(n);
        }
      }
      tests.push((ev) => (ev.type === 'connect' || ev.type === 'accept' || ev.type === 'dns') && set.has(ev.dport));
    }
  }
  if (m.drift) {
    needs('drift', ['drift']);
    const reason = globs(m.drift.reason, 'drift.reason');
    const change = globs(m.drift.change, 'drift.change');
    const subject = globs(m.drift.subject, 'drift.subject');
    if (reason) tests.push((ev) => ev.type === 'drift' && reason(ev.reason));
    if (change) tests.push((ev) => ev.type === 'drift' && change(ev.change));
    if (subject) tests.push((ev) => ev.type === 'drift' && subject(ev.subject));
  }
  const exe = globs(m.exe, 'exe');
  if (exe) {
    tests.push((ev, ctx) => {
      if (ev.type === 'exec') return exe(ev.exePath);
      if (ev.type === 'drift') return exe(ev.exec.exePath);
      const p = ctx.processes.lookup(ev.pid);
      return p !== undefined && exe(p.exePath);
    });
  }
  if (m.container) {
    const c = m.container;
    const name = globs(c.name, 'container.name');
    const image = globs(c.image, 'container.image');
    const pod = globs(c.pod, 'container.pod');
    const namespace = globs(c.namespace, 'container.namespace');
    // Per container: metadata does not change once known; unknown containers are asked again.
    const known = new Map<string, boolean>();
    tests.push((ev, ctx) => {
      const id = ev.containerId;
      if (id === '') return false;
      const cached = known.get(id);
      if (cached !== undefined) return cached;
      const md = ctx.container(id);
      if (md === undefined) return false;
      const ok =
        (!name || name(md.name)) &&
        (!image || image(md.image) || (md.imageId !== '' && image(md.imageId))) &&
        (!pod || (md.pod !== null && pod(md.pod.name))) &&
        (!namespace || (md.pod !== null && namespace(md.pod.namespace)));
      if (known.size >= 4096) known.clear();
      known.set(id, ok);
      return ok;
    });
  }
  const parentTest = m.parent && compileProcess(m.parent, `${at}.parent`, globs);
  if (parentTest) {
    tests.push((ev, ctx) => {
      const p = ctx.processes.lookup(ev.ppid);
      return p !== undefined && parentTest(p);
    });
  }
  const ancestorTest = m.ancestor && compileProcess(m.ancestor, `${at}.ancestor`, globs);
  if (ancestorTest) {
    tests.push((ev, ctx) => {
      let pid = ev.ppid;
      for (let depth = 0; depth < 16 && pid > 1; depth++) {
        const p = ctx.processes.lookup(pid);
        if (p === undefined) return false;
        if (ancestorTest(p)) return true;
        if (p.ppid === pid) return false;
        pid = p.ppid;
      }
      return false;
    });
  }
  if (tests.length === 0) return () => true;
  return (ev, ctx) => {
    for (let i = 0; i < tests.length; i++) if (!tests[i](ev, ctx)) return false;
    return true;
  };
}

/**
 * Address in any of the CIDRs. IPv4 (nearly all traffic) by integer compare
 * on the dotted quad (net.BlockList's check builds a SocketAddress per call:
 * measured the detector's largest cost); IPv6 through BlockList.
 */
function compileCidrs(cidrs: readonly string[], field: string): (addr: string, family: number) => boolean {
  const v4: Array<[number, number]> = [];
  const v6 = new BlockList();
  let anyV6 = false;
  for (const c of cidrs) {
    const [net, bits] = c.split('/');
    const family = isIPv4(net) ? 4 : isIPv6(net) ? 6 : 0;
    const prefix = bits === undefined ? (family === 4 ? 32 : 128) : /^\d+$/.test(bits) ? Number(bits) : NaN;
    if (family === 0 || !(prefix >= 0 && prefix <= (family === 4 ? 32 : 128))) {
      throw new FieldError(field, `"${c}" is not an address or CIDR`);
    }
    if (family === 4) {
      const mask = prefix === 0 ? 0 : (0xffffffff << (32 - prefix)) >>> 0;
      v4.push([(ipv4ToInt(net) & mask) >>> 0, mask]);
    } else {
      v6.addSubnet(net, prefix, 'ipv6');
      anyV6 = true;
    }
  }
  return (addr, family) => {
    if (family === 6) return anyV6 && v6.check(addr, 'ipv6');
    if (v4.length === 0) return false;
    const ip = ipv4ToInt(addr);
    if (ip < 0) return false;
    for (let i = 0; i < v4.length; i++) if (((ip & v4[i][1]) >>> 0) === v4[i][0]) return true;
    return false;
  };
}

/** A dotted quad as an unsigned integer; -1 when it is not one. */
function ipv4ToInt(s: string): number {
  let ip = 0;
  let part = 0;
  let digits = 0;
  let dots = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c === 46) {
      if (digits === 0 || part > 255) return -1;
      ip = ip * 256 + part;
      part = 0;
      digits = 0;
      dots++;
    } else if (c >= 48 && c <= 57) {
      part = part * 10 + (c - 48);
      digits++;
    } else return -1;
  }
  if (dots !== 3 || digits === 0 || part > 255) return -1;
  return ip * 256 + part;
}

function compileProcess(
  spec: z.infer<typeof processSchema>,
  at: string,
  globs: (values: readonly string[] | undefined, field: string) => StringMatcher | undefined,
): ((p: { comm: string; exePath: string }) => boolean) | undefined {
  const field = at.slice(at.indexOf('.') + 1);
  const comm = globs(spec.comm, `${field}.comm`);
  const exe = globs(spec.exe, `${field}.exe`);
  if (!comm && !exe) return undefined;
  return (p) => (!comm || comm(p.comm)) && (!exe || exe(p.exePath));
}
