/** Collects a sensor's events and waits for the ones a test expects. */
import type { AmberEvent, EventOf, EventType } from '../../src/sensor/events';

export class EventLog {
  readonly events: AmberEvent[] = [];

  push = (batch: AmberEvent[]): void => {
    for (const e of batch) this.events.push(e);
  };

  find<T extends EventType>(type: T, pred: (e: EventOf<T>) => boolean): EventOf<T>[] {
    return this.events.filter((e): e is EventOf<T> => e.type === type && pred(e as EventOf<T>));
  }

  /** Waits until at least `count` matching events arrived; fails with what it saw when they do not. */
  async waitFor<T extends EventType>(
    type: T,
    pred: (e: EventOf<T>) => boolean,
    { count = 1, timeoutMs = 10_000 } = {},
  ): Promise<EventOf<T>[]> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const found = this.find(type, pred);
      if (found.length >= count) return found;
      if (Date.now() > deadline) {
        const sameType = this.events.filter((e) => e.type === type).slice(-5);
        throw new Error(
          `expected ${count} ${type} event(s) within ${timeoutMs} ms, saw ${found.length}; last ${type} events: ${JSON.stringify(sameType, null, 1)}`,
        );
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}
