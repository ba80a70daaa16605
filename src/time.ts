/**
 * Durations and time arguments for the CLI and the configuration (`--since 5m`, `--until 2024-05-01T12:00:00Z`) and
 * time formatting. All times are ns since the Unix epoch, as in the events.
 */

export const NS_PER_MS = 1e6;
const NS_PER_UNIT: Record<string, number> = {
  ns: 1,
  us: 1e3,
  µs: 1e3,
  ms: 1e6,
  s: 1e9,
  m: 60e9,
  h: 3600e9,
  d: 86400e9,
};

export function nowNs(): number {
  return Date.now() * NS_PER_MS;
}

/** "90s", "5m", "1h30m", "2d", "250ms" → ns. Throws a RangeError saying what is accepted. */
export function parseDuration(text: string): number {
  const trimmed = text.trim();
  const part = /(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h|d)/gy;
  let total = 0;
  let end = 0;
  let parts = 0;
  for (let m = part.exec(trimmed); m; m = part.exec(trimmed)) {
    total += Number(m[1]) * NS_PER_UNIT[m[2]];
    end = part.lastIndex;
    parts++;
  }
  if (parts === 0 || end !== trimmed.length) {
    throw new RangeError(`invalid duration "${text}": use a number with a unit (ns, us, ms, s, m, h, d), e.g. 90s, 5m, 1h30m`);
  }
  return total;
}

/** A duration in milliseconds (the configuration's and timers' unit). */
export function parseDurationMs(text: string): number {
  return parseDuration(text) / NS_PER_MS;
}

const RFC3339 =
  /^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?([Zz]|[+-]\d{2}:\d{2})$/;

/**
 * A CLI time argument → ns since the epoch:
 * - a duration ago: `5m`, `1h30m`, `2d` (relative to nowNs);
 * - `now`;
 * - an RFC 3339 time: `2024-05-01T12:00:00Z`, `2024-05-01T14:00:00.123456789+02:00`;
 * - ns since the epoch as printed in events (`ts`), at least 16 digits.
 */
export function parseTimeArg(text: string, now: number): number {
  const trimmed = text.trim();
  if (trimmed === 'now') return now;
  if (/^\d{16,}$/.test(trimmed)) return Number(trimmed);
  const m = RFC3339.exec(trimmed);
  if (m) {
    const [, year, month, day, hour, minute, second, fraction = '', zone] = m;
    const base = `${year}-${month}-${day}T${hour}:${minute}:${second}${zone.toUpperCase()}`;
    const ms = Date.parse(base);
    const valid = new Date(Date.UTC(+year, +month - 1, +day, +hour, +minute, +second));
    if (
      Number.isNaN(ms) ||
      valid.getUTCMonth() !== +month - 1 ||
      valid.getUTCDate() !== +day ||
      +hour > 23 ||
      +minute > 59 ||
      +second > 59
    ) {
      throw new RangeError(`invalid time "${text}": not a real date and time`);
    }
    return ms * NS_PER_MS + Number(fraction.padEnd(9, '0'));
  }
  if (/^\d/.test(trimmed)) {
    let duration: number;
    try {
      duration = parseDuration(trimmed);
    } catch {
      throw timeError(text);
    }
    return now - duration;
  }
  throw timeError(text);
}

function timeError(text: string): RangeError {
  return new RangeError(
    `invalid time "${text}": use a duration ago (30s, 5m, 1h30m, 2d), "now", an RFC 3339 time ` +
      '(2024-05-01T12:00:00Z, 2024-05-01T14:00:00.5+02:00) or ns since the epoch',
  );
}

/** RFC 3339 in UTC with ms precision, e.g. 2024-05-01T12:00:00.123Z. */
export function formatTs(ns: number): string {
  // Round to µs first: ts is a float64 (256 ns steps), so 12:00:00.002 may be stored as 12:00:00.001999872.
  return new Date(Math.floor(Math.round(ns / 1e3) / 1e3)).toISOString();
}
