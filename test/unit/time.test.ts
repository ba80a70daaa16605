import { describe, expect, it } from 'vitest';
import { formatTs, parseDuration, parseTimeArg } from '../../src/time';

const NOW = Date.UTC(2024, 4, 1, 12, 0, 0) * 1e6;
const SEC = 1e9;

describe('parseDuration', () => {
  it.each([
    ['90s', 90 * SEC],
    ['5m', 300 * SEC],
    ['1h30m', 5400 * SEC],
    ['2d', 2 * 86400 * SEC],
    ['250ms', 0.25 * SEC],
    ['1.5h', 5400 * SEC],
    ['10us', 10_000],
    ['7ns', 7],
  ])('%s', (text, ns) => expect(parseDuration(text)).toBe(ns));

  it.each(['', '5', 'm', '5x', '5m garbage', '-5m', '1h 30m'])('rejects %j', (text) => {
    expect(() => parseDuration(text)).toThrow(`invalid duration "${text}": use a number with a unit`);
  });
});

describe('parseTimeArg', () => {
  it.each([
    ['5m', NOW - 300 * SEC],
    ['1h30m', NOW - 5400 * SEC],
    ['now', NOW],
    ['2024-05-01T11:00:00Z', NOW - 3600 * SEC],
    ['2024-05-01t11:00:00z', NOW - 3600 * SEC],
    ['2024-05-01T13:30:00+02:00', NOW - 1800 * SEC],
    ['2024-05-01T12:00:00.5Z', NOW + 0.5 * SEC],
    ['2024-05-01T12:00:00.000000256Z', NOW + 256],
    ['1714564800000000000', NOW],
  ])('%s', (text, ns) => expect(parseTimeArg(text, NOW)).toBe(ns));

  it.each(['yesterday', '5', '12345', '2024-05-01T12:00:00', '2024-05-01', '2024-05-01 12:00', '-5m', '5 minutes'])(
    'rejects %j, saying what is accepted',
    (text) => {
      expect(() => parseTimeArg(text, NOW)).toThrow(
        `invalid time "${text}": use a duration ago (30s, 5m, 1h30m, 2d), "now", an RFC 3339 time (2024-05-01T12:00:00Z, 2024-05-01T14:00:00.5+02:00) or ns since the epoch`,
      );
    },
  );

  it.each(['2024-02-30T00:00:00Z', '2024-13-01T00:00:00Z', '2024-05-01T24:00:00Z', '2024-05-01T12:60:00Z'])(
    'rejects the impossible date %j',
    (text) => expect(() => parseTimeArg(text, NOW)).toThrow(`invalid time "${text}": not a real date and time`),
  );
});

describe('formatTs', () => {
  it('prints RFC 3339 UTC with ms', () => {
    expect(formatTs(NOW + 123_456_789)).toBe('2024-05-01T12:00:00.123Z');
  });
});
