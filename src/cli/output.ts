/**
 * The one output writer of every command: text is gathered into large writes
 * (one syscall per CHUNK, not per line), backpressure is honoured, and a reader
 * that goes away (`amber trace … | head -2`, `amber buffer stats | true`)
 * ends the output quietly instead of crashing on EPIPE: the command sees
 * `closed` and stops, and still reports on stderr.
 */

/** Bytes gathered before a write: large writes keep `-o json > file` cheap. */
const CHUNK = 256 * 1024;

export class OutputWriter {
  private chunk = '';
  private gone = false;
  private waiting: Promise<void> | null = null;
  private readonly onGone: Array<() => void> = [];

  constructor(private readonly out: NodeJS.WritableStream) {
    // EPIPE and friends arrive as an 'error' event; without a listener they would crash the process
    out.on('error', () => this.markGone());
    out.once('close', () => this.markGone());
  }

  /** The reader went away: nothing more will be written. */
  get closed(): boolean {
    return this.gone;
  }

  /** Calls f once when the reader goes away (e.g. to stop tracing). */
  onClosed(f: () => void): void {
    if (this.gone) f();
    else this.onGone.push(f);
  }

  /** Queues text (whole lines, each ending in \n); writes when CHUNK is reached. */
  write(text: string): void {
    if (this.gone) return;
    this.chunk += text;
    if (this.chunk.length >= CHUNK) this.writeChunk();
  }

  /**
   * Queues text and resolves when the writer can take more: at once unless the
   * stream asked to wait (backpressure). Resolves true when the reader is gone.
   */
  async add(text: string): Promise<boolean> {
    this.write(text);
    if (this.waiting) await this.waiting;
    return this.gone;
  }

  /** Writes what is gathered; a promise when the stream asked to wait (backpressure), to be awaited before more. */
  flush(): Promise<void> | undefined {
    this.writeChunk();
    return this.waiting ?? undefined;
  }

  private writeChunk(): void {
    if (this.gone || this.chunk === '') return;
    const text = this.chunk;
    this.chunk = '';
    let ok: boolean;
    try {
      ok = this.out.write(text);
    } catch {
      this.markGone(); // a stream destroyed after an earlier EPIPE
      return;
    }
    if (!ok && !this.waiting) {
      this.waiting = new Promise<void>((resolve) => {
        const done = () => {
          this.out.off('drain', done);
          this.waiting = null;
          resolve();
        };
        this.out.once('drain', done);
        this.onClosed(done);
      });
    }
  }

  private markGone(): void {
    if (this.gone) return;
    this.gone = true;
    this.chunk = '';
    for (const f of this.onGone.splice(0)) f();
  }
}

/** Writes a diagnostic line to stderr; a closed stderr is no reason to fail. */
export function note(err: NodeJS.WritableStream, text: string): void {
  try {
    if (!(err as NodeJS.WritableStream & { destroyed?: boolean }).destroyed) err.write(text);
  } catch {
    // nobody is listening
  }
}
