/** Findings (drift, alert) are stored by the block codec like any event, and counted under their types. */
import { describe, expect, it } from 'vitest';
import { BlockEncoder, decodeBlockPayload } from '../../src/buffer/block-codec';
import type { AmberEvent } from '../../src/sensor/events';
import { ALERT, ALERT_OPEN, DRIFT } from '../helpers/findings';

describe('findings in the buffer', () => {
  it('round-trips a drift and an alert finding exactly and counts them per type', () => {
    const events: AmberEvent[] = [ALERT_OPEN, DRIFT, ALERT];
    const enc = new BlockEncoder(4096);
    for (const e of events) enc.append(e);
    const { payload, summary } = enc.finish();
    expect(decodeBlockPayload(payload)).toEqual(events);
    expect(summary.typeCounts).toEqual([0, 0, 0, 1, 0, 0, 0, 1, 1]);
  });
});
