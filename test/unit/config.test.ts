import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { envName, loadConfig, optionPaths, parseSize } from '../../src/config';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'amber-config-'));
function file(name: string, text: string): string {
  const p = path.join(dir, name);
  fs.writeFileSync(p, text);
  return p;
}

describe('config', () => {
  it('has a working default for every option', () => {
    expect(loadConfig()).toEqual({
      dataDir: '/var/lib/amber',
      logLevel: 'info',
      statsInterval: 60_000,
      // TODO(merge): config.ts should default to SENSOR_EVENT_TYPES (the sensor ignores drift/alert); then drop them here
      sensor: { types: ['exec', 'exit', 'fork', 'open', 'connect', 'accept', 'dns', 'drift', 'alert'], ringBytes: 16 << 20, pollInterval: 10, dnsTimeout: 5000 },
      buffer: {
        maxBytes: 256 << 20,
        maxAge: 86_400_000,
        flushInterval: 1000,
        maxMemoryBytes: 64 << 20,
        maxFrozenWindows: 50,
        maxFrozenBytes: 512 << 20,
      },
    });
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

  it('names the environment variable that is wrong', () => {
    expect(() => loadConfig({ env: { AMBER_BUFFER_MAX_AGE: 'soon' } })).toThrow('environment AMBER_BUFFER_MAX_AGE: buffer.maxAge: invalid duration "soon"');
  });

  it('reports a missing file clearly', () => {
    expect(() => loadConfig({ file: path.join(dir, 'absent.yaml') })).toThrow(/^cannot read config file .*absent\.yaml: ENOENT/);
  });

  it('derives one environment variable per option', () => {
    expect(optionPaths().map(envName)).toEqual([
      'AMBER_DATA_DIR',
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
    ]);
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
