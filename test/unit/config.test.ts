import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { envName, loadConfig, optionPaths, parseSize } from '../../src/config';
import { MAX_TIMER_MS, RANGES } from '../../src/defaults';
import { DEFAULT_PROCESS_FACTS } from '../../src/incident/process-facts';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'amber-config-'));
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
function file(name: string, text: string): string {
  const p = path.join(dir, name);
  fs.writeFileSync(p, text);
  return p;
}

describe('config', () => {
  it('has a working default for every option', () => {
    expect(loadConfig()).toEqual({
      dataDir: '/var/lib/amber',
      nodeName: os.hostname(),
      logLevel: 'info',
      statsInterval: 60_000,
      sensor: { types: ['exec', 'exit', 'fork', 'open', 'connect', 'accept', 'dns'], ringBytes: 16 << 20, pollInterval: 10, dnsTimeout: 5000 },
      buffer: {
        maxBytes: 256 << 20,
        maxAge: 86_400_000,
        flushInterval: 1000,
        maxMemoryBytes: 64 << 20,
        maxFrozenWindows: 50,
        maxFrozenBytes: 512 << 20,
      },
      api: {
        listen: ['unix:///run/amber/amber.sock'],
        maxStreamsPerClient: 16,
        maxRequestBytes: 64 * 1024,
        traceQueue: 65_536,
        queryTimeout: 300_000,
      },
      metrics: { listen: '' },
      detect: {
        enabled: true,
        rules: path.resolve(__dirname, '../../rules/default.yaml'),
        lists: {},
        writableMounts: false,
        maxAlertsPerRulePerSecond: 100,
        hashMaxBytes: 256 << 20,
      },
      incident: {
        enabled: true,
        window: { before: 600_000, after: 10_000 },
        joinWindow: 600_000,
        maxConcurrent: 2,
        maxQueued: 16,
        maxPerHour: 60,
        memory: { enabled: true, allProcesses: false, maxBytes: 2 * 2 ** 30, freeze: true },
        upperLayer: { maxFileBytes: 64 << 20, maxTotalBytes: 1 << 30 },
        executableMaxBytes: 256 << 20,
        maxProcesses: 64,
        redactEnv: [...DEFAULT_PROCESS_FACTS.redactEnv],
        retention: { maxBytes: 10 * 2 ** 30, maxCount: 100 },
        upload: { retry: { initialDelay: 5000, maxDelay: 600_000 }, sinks: [] },
        bpffs: '/sys/fs/bpf',
      },
    });
  });

  it('reads upload sinks from the file, with units, and refuses a misspelt sink key naming it', () => {
    const f = file(
      'sinks.yaml',
      'incident:\n  upload:\n    sinks:\n      - { type: s3, bucket: ev, endpoint: "http://127.0.0.1:9000", partSize: 8MiB, requestTimeout: 30s, objectLock: { mode: COMPLIANCE, retainDays: 30 } }\n      - { type: sftp, host: h, username: u, remoteDir: /in, readyTimeout: 5s }\n',
    );
    expect(loadConfig({ file: f }).incident.upload.sinks).toEqual([
      { type: 's3', bucket: 'ev', endpoint: 'http://127.0.0.1:9000', partSize: 8 << 20, requestTimeout: 30_000, objectLock: { mode: 'COMPLIANCE', retainDays: 30 } },
      { type: 'sftp', host: 'h', username: 'u', remoteDir: '/in', readyTimeout: 5000 },
    ]);
    const bad = file('badsink.yaml', 'incident:\n  upload:\n    sinks:\n      - { type: s3, bukket: ev }\n');
    expect(() => loadConfig({ file: bad })).toThrow(/badsink\.yaml: (incident\.upload\.sinks\.0: .*|unknown key incident\.upload\.sinks\.0\.bukket)/);
    expect(() => loadConfig({ env: { AMBER_INCIDENT_REDACT_ENV: 'A_*, *_B' } }).incident.redactEnv).not.toThrow();
    expect(loadConfig({ env: { AMBER_INCIDENT_REDACT_ENV: 'A_*, *_B' } }).incident.redactEnv).toEqual(['A_*', '*_B']);
  });

  it('reads detect flags from the environment as true/false and refuses anything else', () => {
    expect(loadConfig({ env: { AMBER_DETECT_ENABLED: 'false', AMBER_DETECT_WRITABLE_MOUNTS: 'true' } }).detect).toMatchObject({ enabled: false, writableMounts: true });
    expect(() => loadConfig({ env: { AMBER_DETECT_ENABLED: 'no' } })).toThrow(/^environment AMBER_DETECT_ENABLED: detect\.enabled: /);
    const f = file('lists.yaml', 'detect:\n  lists:\n    blocklist_domains: ["*.evil.example"]\n    blocklist_ports: [4444]\n');
    expect(loadConfig({ file: f }).detect.lists).toEqual({ blocklist_domains: ['*.evil.example'], blocklist_ports: [4444] });
  });

  it('reads YAML with units, then the environment, then flags', () => {
    const f = file('ok.yaml', 'dataDir: /srv/amber\nbuffer:\n  maxBytes: 64MiB\n  maxAge: 30m\nsensor:\n  types: [exec, dns]\n');
    const c = loadConfig({
      file: f,
      env: { AMBER_BUFFER_FLUSH_INTERVAL: '250ms', AMBER_SENSOR_TYPES: 'exec, open', AMBER_DATA_DIR: '/env/dir', HOME: '/root' },
      overrides: [[['dataDir'], '/flag/dir']],
    });
    expect(c.dataDir).toBe('/flag/dir');
    expect(c.buffer).toMatchObject({ maxBytes: 64 << 20, maxAge: 1_800_000, flushInterval: 250 });
    expect(c.sensor.types).toEqual(['exec', 'open']);
  });

  it.each([
    ['unknown.yaml', 'buffer:\n  maxAgee: 1h\n', 'unknown.yaml: unknown key buffer.maxAgee'],
    ['toplevel.yaml', 'datadir: /x\n', 'toplevel.yaml: unknown key datadir'],
    ['type.yaml', 'buffer:\n  maxBytes: lots\n', 'type.yaml: buffer.maxBytes: invalid size "lots"'],
    ['enum.yaml', 'sensor:\n  types: [exec, files]\n', 'enum.yaml: sensor.types.1: '],
    ['yaml.yaml', 'buffer: [\n', 'yaml.yaml: not valid YAML'],
    ['list.yaml', '- a\n- b\n', 'list.yaml: expected a mapping of options at the top level'],
  ])('%s is refused with the key named', (name, text, message) => {
    expect(() => loadConfig({ file: file(name, text) })).toThrow(message);
  });

  it.each([
    ['statsInterval: 30d\n', 'statsInterval: must be 1s to 24h, got "30d"'],
    ['statsInterval: 0\n', 'statsInterval: must be 1s to 24h, got 0'],
    ['buffer:\n  flushInterval: 30d\n', 'buffer.flushInterval: must be 10ms to 10m, got "30d"'],
    ['buffer:\n  flushInterval: 0\n', 'buffer.flushInterval: must be 10ms to 10m, got 0'],
    ['sensor:\n  pollInterval: 0\n', 'sensor.pollInterval: must be 1ms to 1s, whole ms, got 0'],
    ['sensor:\n  pollInterval: 30d\n', 'sensor.pollInterval: must be 1ms to 1s, whole ms, got "30d"'],
    ['sensor:\n  pollInterval: 1500us\n', 'sensor.pollInterval: must be 1ms to 1s, whole ms, got "1500us"'],
    ['sensor:\n  dnsTimeout: 30d\n', 'sensor.dnsTimeout: must be 100ms to 10m, got "30d"'],
    ['sensor:\n  ringBytes: 3MiB\n', 'sensor.ringBytes: must be a power of two'],
    ['sensor:\n  ringBytes: 4GiB\n', 'sensor.ringBytes: must be 64KiB to 1GiB, a power of two, got "4GiB"'],
    ['buffer:\n  maxBytes: 0\n', 'buffer.maxBytes: must be 16MiB to 64TiB, got 0'],
    ['buffer:\n  maxBytes: -5\n', 'buffer.maxBytes: must be 16MiB to 64TiB, got -5'],
    ['buffer:\n  maxAge: 0s\n', 'buffer.maxAge: must be 1m to 366d, got "0s"'],
    ['buffer:\n  maxMemoryBytes: 1KiB\n', 'buffer.maxMemoryBytes: must be 4MiB to 64GiB, got "1KiB"'],
    ['buffer:\n  maxFrozenWindows: 0\n', 'buffer.maxFrozenWindows: must be 1 to 10000, got 0'],
    ['buffer:\n  maxFrozenWindows: 2.5\n', 'buffer.maxFrozenWindows: must be 1 to 10000, got 2.5'],
    ['buffer:\n  maxFrozenBytes: 0\n', 'buffer.maxFrozenBytes: must be 1MiB to 64TiB, got 0'],
  ])('refuses %j outside its range, naming the key and the file', (text, message) => {
    const f = file('range.yaml', text);
    expect(() => loadConfig({ file: f })).toThrow(`${f}: ${message}`);
  });

  it('names the key and the source of an out-of-range value from the environment and the command line', () => {
    expect(() => loadConfig({ env: { AMBER_STATS_INTERVAL: '30d' } })).toThrow('environment AMBER_STATS_INTERVAL: statsInterval: must be 1s to 24h, got "30d"');
    expect(() => loadConfig({ env: { AMBER_BUFFER_FLUSH_INTERVAL: '0ms' } })).toThrow(
      'environment AMBER_BUFFER_FLUSH_INTERVAL: buffer.flushInterval: must be 10ms to 10m, got "0ms"',
    );
    expect(() => loadConfig({ overrides: [[['sensor', 'pollInterval'], '30d']] })).toThrow(
      'command line: sensor.pollInterval: must be 1ms to 1s, whole ms, got "30d"',
    );
  });

  it('accepts the bounds of every range', () => {
    const c = loadConfig({
      file: file(
        'bounds.yaml',
        'statsInterval: 24h\nsensor:\n  pollInterval: 1s\n  ringBytes: 64KiB\n  dnsTimeout: 100ms\n' +
          'buffer:\n  maxBytes: 16MiB\n  flushInterval: 10m\n  maxAge: 366d\n  maxFrozenWindows: "10000"\n',
      ),
    });
    expect(c.statsInterval).toBe(86_400_000);
    expect(c.sensor).toMatchObject({ pollInterval: 1000, ringBytes: 65536, dnsTimeout: 100 });
    expect(c.buffer).toMatchObject({ maxBytes: 16 << 20, flushInterval: 600_000, maxAge: 366 * 86_400_000, maxFrozenWindows: 10_000 });
  });

  it('keeps every duration within what a Node timer and the native reader take', () => {
    for (const range of [RANGES.statsInterval, RANGES.sensor.pollInterval, RANGES.sensor.dnsTimeout, RANGES.buffer.flushInterval, RANGES.traceTimeout]) {
      expect(range.max).toBeLessThanOrEqual(MAX_TIMER_MS);
    }
    expect(RANGES.sensor.pollInterval.integer).toBe(true);
  });

  it('names the environment variable that is wrong', () => {
    expect(() => loadConfig({ env: { AMBER_BUFFER_MAX_AGE: 'soon' } })).toThrow('environment AMBER_BUFFER_MAX_AGE: buffer.maxAge: invalid duration "soon"');
  });

  it('reports a missing file clearly', () => {
    expect(() => loadConfig({ file: path.join(dir, 'absent.yaml') })).toThrow(/^cannot read config file .*absent\.yaml: ENOENT/);
  });

  it('derives one environment variable per option', () => {
    expect(optionPaths().map(envName)).toEqual([
      'AMBER_DATA_DIR',
      'AMBER_NODE_NAME',
      'AMBER_LOG_LEVEL',
      'AMBER_STATS_INTERVAL',
      'AMBER_SENSOR_TYPES',
      'AMBER_SENSOR_RING_BYTES',
      'AMBER_SENSOR_POLL_INTERVAL',
      'AMBER_SENSOR_DNS_TIMEOUT',
      'AMBER_BUFFER_MAX_BYTES',
      'AMBER_BUFFER_MAX_AGE',
      'AMBER_BUFFER_FLUSH_INTERVAL',
      'AMBER_BUFFER_MAX_MEMORY_BYTES',
      'AMBER_BUFFER_MAX_FROZEN_WINDOWS',
      'AMBER_BUFFER_MAX_FROZEN_BYTES',
      'AMBER_API_LISTEN',
      'AMBER_API_MAX_STREAMS_PER_CLIENT',
      'AMBER_API_MAX_REQUEST_BYTES',
      'AMBER_API_TRACE_QUEUE',
      'AMBER_API_QUERY_TIMEOUT',
      'AMBER_METRICS_LISTEN',
      'AMBER_DETECT_ENABLED',
      'AMBER_DETECT_RULES',
      'AMBER_DETECT_WRITABLE_MOUNTS',
      'AMBER_DETECT_MAX_ALERTS_PER_RULE_PER_SECOND',
      'AMBER_DETECT_HASH_MAX_BYTES',
      'AMBER_INCIDENT_ENABLED',
      'AMBER_INCIDENT_WINDOW_BEFORE',
      'AMBER_INCIDENT_WINDOW_AFTER',
      'AMBER_INCIDENT_JOIN_WINDOW',
      'AMBER_INCIDENT_MAX_CONCURRENT',
      'AMBER_INCIDENT_MAX_QUEUED',
      'AMBER_INCIDENT_MAX_PER_HOUR',
      'AMBER_INCIDENT_MEMORY_ENABLED',
      'AMBER_INCIDENT_MEMORY_ALL_PROCESSES',
      'AMBER_INCIDENT_MEMORY_MAX_BYTES',
      'AMBER_INCIDENT_MEMORY_FREEZE',
      'AMBER_INCIDENT_UPPER_LAYER_MAX_FILE_BYTES',
      'AMBER_INCIDENT_UPPER_LAYER_MAX_TOTAL_BYTES',
      'AMBER_INCIDENT_EXECUTABLE_MAX_BYTES',
      'AMBER_INCIDENT_MAX_PROCESSES',
      'AMBER_INCIDENT_REDACT_ENV',
      'AMBER_INCIDENT_RETENTION_MAX_BYTES',
      'AMBER_INCIDENT_RETENTION_MAX_COUNT',
      'AMBER_INCIDENT_UPLOAD_RETRY_INITIAL_DELAY',
      'AMBER_INCIDENT_UPLOAD_RETRY_MAX_DELAY',
      'AMBER_INCIDENT_BPFFS',
    ]);
  });

  it('takes API listeners from the environment as a comma list', () => {
    expect(loadConfig({ env: { AMBER_API_LISTEN: 'unix:///a/x.sock, unix:///b/y.sock' } }).api.listen).toEqual(['unix:///a/x.sock', 'unix:///b/y.sock']);
  });

  it.each([
    ['4096', 4096],
    ['64KiB', 65536],
    ['1.5 MiB', 1572864],
    ['2GB', 2e9],
  ])('parses size %s', (text, bytes) => {
    expect(parseSize(text)).toBe(bytes);
  });
});
