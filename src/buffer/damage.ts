/** Damaged blocks found by recovery, queries and verification: each logged and counted once. */
export type LogLevel = 'info' | 'warn' | 'error';
export type BufferLog = (level: LogLevel, msg: string, fields?: Record<string, unknown>) => void;

export class DamageLog {
  private readonly seen = new Set<string>();

  constructor(private readonly log: BufferLog) {}

  /** Damaged blocks (or stretches) seen so far. */
  get count(): number {
    return this.seen.size;
  }

  report(file: string, offset: number, reason: string): void {
    const key = `${file}@${offset}`;
    if (this.seen.has(key)) return;
    this.seen.add(key);
    this.log('warn', 'event buffer: skipping a damaged block', { file, offset, reason });
  }
}
