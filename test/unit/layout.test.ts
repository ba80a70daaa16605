import { describe, expect, it } from 'vitest';
import { loadBinding } from '../../src/sensor/binding';
import { Layout } from '../../src/sensor/records';

// The decoder's offsets against what the C compiler laid out for bpf/events.h.
describe('record layout', () => {
  it('matches the C structs field by field', () => {
    const native = loadBinding().layout();
    expect(Object.keys(native).sort()).toEqual(Object.keys(Layout).sort());
    for (const [field, value] of Object.entries(native)) {
      expect({ field, value: Layout[field as keyof typeof Layout] }).toEqual({ field, value });
    }
  });
});
