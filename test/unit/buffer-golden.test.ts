/**
 * A data dir written by the buffer of commit 2864c44 (the first on-disk format),
 * kept as a fixture: a change that cannot read yesterday's buffer fails here.
 * The segment files are never changed. events.json was changed once, to the
 * exactly derivable upgraded form of what v1 stored: DNS answers were strings
 * (A/AAAA addresses, CNAME/NS/PTR names) and read back as { type, data }, the
 * type from the address form, "" for a name (v1 did not store which type).
 */
import { readFileSync } from 'node:fs';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { EventBuffer } from '../../src/buffer';
import { collect } from '../helpers/buffer-events';

const GOLDEN = path.join(__dirname, '..', 'fixtures', 'golden-v1');

describe('golden segment (format v1)', () => {
  it('reads every event of a segment written by the first format, exactly', async () => {
    const expected = JSON.parse(readFileSync(path.join(GOLDEN, 'events.json'), 'utf8'));
    const buffer = await EventBuffer.openReadOnly(GOLDEN);
    try {
      const events = await collect(buffer.query());
      expect(events).toEqual(expected);
      expect(buffer.stats().events).toBe(11);
    } finally {
      await buffer.close();
    }
  });
});
