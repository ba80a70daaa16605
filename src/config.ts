/**
 * The agent's configuration: one schema, parsed once (YAML file, then
 * environment overrides), passed down typed. Every option has a working
 * default, so no file at all is a valid configuration.
 */
import fs from 'node:fs';
import os from 'node:os';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import { DEFAULTS, RANGES, type Range } from './defaults';
import { parseDurationMs } from './time';
import { defaultRulesFile } from './detect/rules';
import { DEFAULT_PROCESS_FACTS } from './incident/process-facts';
import { SENSOR_EVENT_TYPES } from './sensor/events';

const SIZE_UNITS: Record<string, number> = { '': 1, b: 1, k: 1024, kb: 1000, kib: 1024, m: 1024 ** 2, mb: 1e6, mib: 1024 ** 2, g: 1024 ** 3, gb: 1e9, gib: 1024 ** 3 };

/** "256MiB", "1.5GB", "4096"; a bare number is bytes. */
export function parseSize(text: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*([a-z]*)$/i.exec(text.trim());
  const unit = m ? SIZE_UNITS[m[2].toLowerCase()] : undefined;
  if (!m || unit === undefined) throw new Error(`invalid size "${text}" (examples: 4096, 64KiB, 256MiB, 1GiB)`);
  return Math.round(Number(m[1]) * unit);
}

/** The value as the user wrote it, for messages. */
function shown(v: unknown): string {
  return typeof v === 'string' ? `"${v}"` : String(v);
}

/**
 * A number (or a string parse() reads) inside its documented range: a value
 * outside it is refused here, with the key and its source named by the
 * caller, before any timer, native reader or buffer sees it.
 */
function ranged(parse: (text: string) => number, range: Range) {
  return z.union([z.number(), z.string()]).transform((v, ctx) => {
    let n: number;
    try {
      n = typeof v === 'number' ? v : parse(v);
    } catch (err) {
      ctx.addIssue({ code: 'custom', message: (err as Error).message });
      return z.NEVER;
    }
    if (!(n >= range.min && n <= range.max) || (range.integer && !Number.isInteger(n))) {
      ctx.addIssue({ code: 'custom', message: `must be ${range.text}, got ${shown(v)}` });
      return z.NEVER;
    }
    return n;
  });
}

function parseCount(text: string): number {
  if (!/^\s*\d+\s*$/.test(text)) throw new Error(`invalid number "${text}" (a whole number, e.g. 50)`);
  return Number(text);
}

/** true/false, also as the strings an environment variable holds. */
const flag = z.union([z.boolean(), z.enum(['true', 'false'])]).transform((v) => v === true || v === 'true');

/** Bytes: a number, or a string with a unit. */
const size = (range: Range) => ranged(parseSize, range);
/** Milliseconds: a number, or a string with a unit (10ms, 5s, 24h). */
const duration = (range: Range) => ranged(parseDurationMs, range);
const count = (range: Range) => ranged(parseCount, range);

const ringBytes = size(RANGES.sensor.ringBytes).refine((n) => (n & (n - 1)) === 0 && n % 4096 === 0, {
  message: 'must be a power of two (e.g. 16MiB)',
});

const sensorSchema = z
  .object({
    types: z.array(z.enum(SENSOR_EVENT_TYPES)).min(1).default([...SENSOR_EVENT_TYPES]),
    ringBytes: ringBytes.default(DEFAULTS.sensor.ringBytes),
    pollInterval: duration(RANGES.sensor.pollInterval).default(DEFAULTS.sensor.pollMs),
    dnsTimeout: duration(RANGES.sensor.dnsTimeout).default(DEFAULTS.sensor.dnsTimeoutMs),
  })
  .strict();

const bufferSchema = z
  .object({
    maxBytes: size(RANGES.buffer.maxBytes).default(DEFAULTS.buffer.maxBytes),
    maxAge: duration(RANGES.buffer.maxAge).default(DEFAULTS.buffer.maxAgeMs),
    flushInterval: duration(RANGES.buffer.flushInterval).default(DEFAULTS.buffer.flushIntervalMs),
    maxMemoryBytes: size(RANGES.buffer.maxMemoryBytes).default(DEFAULTS.buffer.maxMemoryBytes),
    maxFrozenWindows: count(RANGES.buffer.maxFrozenWindows).default(DEFAULTS.buffer.maxFrozenWindows),
    maxFrozenBytes: size(RANGES.buffer.maxFrozenBytes).default(DEFAULTS.buffer.maxFrozenBytes),
  })
  .strict();

/** The agent's API (src/api/server.ts). */
export const DEFAULT_API_SOCKET = DEFAULTS.api.socket;

const apiSchema = z
  .object({
    /** unix:///path and tcp://host:port listeners (TCP needs tls). */
    listen: z.array(z.string().min(1)).min(1).default([`unix://${DEFAULT_API_SOCKET}`]),
    /** Open Trace/Query streams one client may have (a unix socket's clients are one client). */
    maxStreamsPerClient: count(RANGES.api.maxStreamsPerClient).default(DEFAULTS.api.maxStreamsPerClient),
    /** Largest request message accepted. */
    maxRequestBytes: size(RANGES.api.maxRequestBytes).default(DEFAULTS.api.maxRequestBytes),
    /** Events a Trace client may have waiting on the agent before the next are dropped (counted, told). */
    traceQueue: count(RANGES.api.traceQueue).default(DEFAULTS.api.traceQueue),
    /** A Query stream ends after this long (DEADLINE_EXCEEDED). */
    queryTimeout: duration(RANGES.api.queryTimeout).default(DEFAULTS.api.queryTimeoutMs),
    /** mutual TLS for TCP listeners: PEM files, reloaded when they change on disk. */
    tls: z
      .object({ ca: z.string().min(1), cert: z.string().min(1), key: z.string().min(1), refreshInterval: duration(RANGES.api.tlsRefresh).default(DEFAULTS.api.tlsRefreshMs) })
      .strict()
      .optional(),
    /** A file holding a bearer token TCP clients must send (on top of TLS). */
    tokenFile: z.string().min(1).optional(),
  })
  .strict();

/** The detector (src/detect): drift and the rules. */
const detectSchema = z
  .object({
    /** Off: no drift or alert findings, no incidents from them. */
    enabled: flag.default(true),
    /** The rule file (YAML); default the shipped rules/default.yaml. */
    rules: z.string().min(1).default(defaultRulesFile()),
    /** Replace the rule file's named lists, e.g. blocklist_domains: [...] (config file only: no environment variable). */
    lists: z.record(z.string(), z.array(z.union([z.string(), z.number()]))).default({}),
    /** Also drift: executables on writable mounts other than the image (emptyDir, hostPath, tmpfs) written after the start. */
    writableMounts: flag.default(false),
    /** alert findings per rule per second at most; more are counted, not published (drift and incidents never are). */
    maxAlertsPerRulePerSecond: count(RANGES.detect.maxAlertsPerRulePerSecond).default(DEFAULTS.detect.maxAlertsPerRulePerSecond),
    /** Drifted files larger than this are not hashed. */
    hashMaxBytes: size(RANGES.detect.hashMaxBytes).default(DEFAULTS.detect.hashMaxBytes),
  })
  .strict();

const s3SinkSchema = z
  .object({
    type: z.literal('s3'),
    name: z.string().min(1).optional(),
    endpoint: z.string().url().optional(),
    region: z.string().min(1).optional(),
    bucket: z.string().min(1),
    prefix: z.string().optional(),
    accessKeyIdFile: z.string().min(1).optional(),
    accessKeyIdEnv: z.string().min(1).optional(),
    secretAccessKeyFile: z.string().min(1).optional(),
    secretAccessKeyEnv: z.string().min(1).optional(),
    sessionTokenFile: z.string().min(1).optional(),
    forcePathStyle: flag.optional(),
    partSize: size(RANGES.incident.partSize).optional(),
    partConcurrency: count({ min: 1, max: 16, text: '1 to 16', integer: true }).optional(),
    requestTimeout: duration(RANGES.incident.timeout).optional(),
    connectTimeout: duration(RANGES.incident.timeout).optional(),
    objectLock: z
      .object({ mode: z.enum(['GOVERNANCE', 'COMPLIANCE']), retainDays: count({ min: 1, max: 36_500, text: '1 to 36500', integer: true }) })
      .strict()
      .optional(),
  })
  .strict();

const sftpSinkSchema = z
  .object({
    type: z.literal('sftp'),
    name: z.string().min(1).optional(),
    host: z.string().min(1),
    port: count({ min: 1, max: 65_535, text: '1 to 65535', integer: true }).optional(),
    username: z.string().min(1),
    privateKeyFile: z.string().min(1).optional(),
    passphraseFile: z.string().min(1).optional(),
    passwordFile: z.string().min(1).optional(),
    hostKeyFingerprints: z.array(z.string().min(1)).optional(),
    acceptAnyHostKey: flag.optional(),
    remoteDir: z.string().startsWith('/'),
    verify: z.enum(['sha256', 'size']).optional(),
    readyTimeout: duration(RANGES.incident.timeout).optional(),
    keepaliveInterval: duration(RANGES.incident.timeout).optional(),
    keepaliveCountMax: count({ min: 1, max: 100, text: '1 to 100', integer: true }).optional(),
  })
  .strict();

const D = DEFAULTS.incident;
const R = RANGES.incident;

/** Incidents (src/incident): evidence capture into signed bundles, uploads, responses. */
const incidentSchema = z
  .object({
    /** Off: no incidents (drift and rules still make findings). */
    enabled: flag.default(true),
    /** The Ed25519 signing key (PEM PKCS#8, owner-only); none: generated on first start in <dataDir>/keys/. */
    signingKeyFile: z.string().min(1).optional(),
    window: z
      .object({ before: duration(R.before).default(D.beforeMs), after: duration(R.after).default(D.afterMs) })
      .strict()
      .default({ before: D.beforeMs, after: D.afterMs }),
    joinWindow: duration(R.joinWindow).default(D.joinWindowMs),
    maxConcurrent: count(R.maxConcurrent).default(D.maxConcurrent),
    maxQueued: count(R.maxQueued).default(D.maxQueued),
    maxPerHour: count(R.maxPerHour).default(D.maxPerHour),
    memory: z
      .object({
        enabled: flag.default(true),
        allProcesses: flag.default(false),
        maxBytes: size(R.memoryMaxBytes).default(D.memoryMaxBytes),
        freeze: flag.default(true),
      })
      .strict()
      .default({ enabled: true, allProcesses: false, maxBytes: D.memoryMaxBytes, freeze: true }),
    upperLayer: z
      .object({ maxFileBytes: size(R.fileBytes).default(D.upperLayerMaxFileBytes), maxTotalBytes: size(R.fileBytes).default(D.upperLayerMaxTotalBytes) })
      .strict()
      .default({ maxFileBytes: D.upperLayerMaxFileBytes, maxTotalBytes: D.upperLayerMaxTotalBytes }),
    executableMaxBytes: size(R.fileBytes).default(D.executableMaxBytes),
    maxProcesses: count(R.maxProcesses).default(D.maxProcesses),
    /** environ keys whose values are replaced by "[redacted]" (case-insensitive globs). */
    redactEnv: z.array(z.string().min(1)).default([...DEFAULT_PROCESS_FACTS.redactEnv]),
    retention: z
      .object({ maxBytes: size(R.fileBytes).default(D.retentionMaxBytes), maxCount: count(R.retentionMaxCount).default(D.retentionMaxCount) })
      .strict()
      .default({ maxBytes: D.retentionMaxBytes, maxCount: D.retentionMaxCount }),
    upload: z
      .object({
        retry: z
          .object({
            initialDelay: duration(R.uploadDelay).default(D.uploadInitialDelayMs),
            maxDelay: duration(R.uploadDelay).default(D.uploadMaxDelayMs),
            maxAttempts: count(R.uploadMaxAttempts).optional(),
          })
          .strict()
          .default({ initialDelay: D.uploadInitialDelayMs, maxDelay: D.uploadMaxDelayMs }),
        sinks: z.array(z.discriminatedUnion('type', [s3SinkSchema, sftpSinkSchema])).default([]),
      })
      .strict()
      .default({ retry: { initialDelay: D.uploadInitialDelayMs, maxDelay: D.uploadMaxDelayMs }, sinks: [] }),
    /** Where network cuts are pinned (bpffs; mounted there when missing). */
    bpffs: z.string().min(1).default('/sys/fs/bpf'),
  })
  .strict();

const metricsSchema = z
  .object({
    /** host:port of the Prometheus endpoint (GET /metrics); "" (the default): off. */
    listen: z.string().default(''),
  })
  .strict();

export const configSchema = z
  .object({
    dataDir: z.string().min(1).default(DEFAULTS.dataDir),
    /** The name this node's events and status carry (the NODE column). */
    nodeName: z.string().min(1).default(os.hostname()),
    logLevel: z.enum(['trace', 'debug', 'info', 'warn', 'error', 'fatal']).default(DEFAULTS.logLevel),
    /** How often the agent logs its counters. */
    statsInterval: duration(RANGES.statsInterval).default(DEFAULTS.statsIntervalMs),
    sensor: sensorSchema.default(sensorSchema.parse({})),
    buffer: bufferSchema.default(bufferSchema.parse({})),
    api: apiSchema.default(apiSchema.parse({})),
    metrics: metricsSchema.default(metricsSchema.parse({})),
    detect: detectSchema.default(detectSchema.parse({})),
    incident: incidentSchema.default(incidentSchema.parse({})),
  })
  .strict();

export type AmberConfig = z.output<typeof configSchema>;

export class ConfigError extends Error {
  override name = 'ConfigError';
}

function describeIssues(error: z.ZodError, source: string): string {
  return error.issues
    .map((issue) => {
      const where = issue.path.join('.') || '(top level)';
      if (issue.code === 'unrecognized_keys') {
        const keys = issue.keys.map((k) => [...issue.path, k].join('.'));
        return `${source}: unknown key ${keys.join(', ')}`;
      }
      return `${source}: ${where}: ${issue.message}`;
    })
    .join('\n');
}

/** AMBER_DATA_DIR, AMBER_LOG_LEVEL, AMBER_BUFFER_MAX_BYTES, AMBER_SENSOR_TYPES (comma list), ... */
export function envName(path: string[]): string {
  return `AMBER_${path.map((p) => p.replace(/([a-z0-9])([A-Z])/g, '$1_$2').toUpperCase()).join('_')}`;
}

/** Lists an environment variable gives as "a, b, c". */
const COMMA_LISTS = ['types', 'listen', 'redactEnv'];

/** Every leaf option's path, for the environment overrides and the docs. */
export function optionPaths(): string[][] {
  const paths: string[][] = [];
  const walk = (value: unknown, prefix: string[]) => {
    if (value && typeof value === 'object' && !Array.isArray(value)) {
      // a map of the user's own keys (detect.lists) has no leaves to name
      for (const [k, v] of Object.entries(value)) walk(v, [...prefix, k]);
    } else if (!Array.isArray(value) || COMMA_LISTS.includes(prefix[prefix.length - 1])) {
      paths.push(prefix); // other lists (incident.upload.sinks: objects) are the config file's alone
    }
  };
  walk(configSchema.parse({}), []);
  return paths;
}

function setPath(target: Record<string, unknown>, path: string[], value: unknown): void {
  let node = target;
  for (const key of path.slice(0, -1)) {
    if (node[key] === undefined || node[key] === null) node[key] = {};
    if (typeof node[key] !== 'object') return; // the file's own type error will be reported
    node = node[key] as Record<string, unknown>;
  }
  node[path[path.length - 1]] = value;
}

/**
 * The configuration from an optional YAML file, then AMBER_* environment
 * variables, then explicit overrides (command-line flags). Errors name the
 * key and where it came from.
 */
export function loadConfig(opts: { file?: string; env?: NodeJS.ProcessEnv; overrides?: Array<[string[], unknown]> } = {}): AmberConfig {
  let raw: Record<string, unknown> = {};
  if (opts.file) {
    let text: string;
    try {
      text = fs.readFileSync(opts.file, 'utf8');
    } catch (err) {
      throw new ConfigError(`cannot read config file ${opts.file}: ${(err as Error).message}`);
    }
    let doc: unknown;
    try {
      doc = parseYaml(text);
    } catch (err) {
      throw new ConfigError(`${opts.file}: not valid YAML: ${(err as Error).message}`);
    }
    if (doc !== null && doc !== undefined && (typeof doc !== 'object' || Array.isArray(doc))) {
      throw new ConfigError(`${opts.file}: expected a mapping of options at the top level`);
    }
    raw = (doc as Record<string, unknown>) ?? {};
    const fromFile = configSchema.safeParse(raw);
    if (!fromFile.success) throw new ConfigError(describeIssues(fromFile.error, opts.file));
  }
  const env = opts.env ?? {};
  for (const path of optionPaths()) {
    const value = env[envName(path)];
    if (value === undefined) continue;
    setPath(raw, path, COMMA_LISTS.includes(path[path.length - 1]) ? value.split(',').map((s) => s.trim()) : value);
    const one = configSchema.safeParse(raw);
    if (!one.success) throw new ConfigError(describeIssues(one.error, `environment ${envName(path)}`));
  }
  for (const [path, value] of opts.overrides ?? []) {
    if (value === undefined) continue;
    setPath(raw, path, value);
  }
  const result = configSchema.safeParse(raw);
  if (!result.success) throw new ConfigError(describeIssues(result.error, 'command line'));
  return result.data;
}
