/** "10s", "5m", "250ms", "1h", "2d"; a bare number is seconds. */
const UNITS_MS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

export function parseDurationMs(text: string): number {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h|d)?$/.exec(text.trim());
  if (!m) throw new Error(`invalid duration "${text}" (examples: 250ms, 10s, 5m, 1h)`);
  return Math.round(Number(m[1]) * UNITS_MS[m[2] ?? 's']);
}
