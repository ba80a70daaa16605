import { describe, expect, it } from 'vitest';
import { loadBinding } from '../../src/sensor/binding';
import { Kind, KIND_MAX, Layout, RecordFlag, SyscallFamily } from '../../src/sensor/records';

// The decoder's copy of bpf/events.h against what the C compiler made of it.
describe('record layout', () => {
  it('matches the C structs field by field', () => {
    const native = loadBinding().layout();
    expect(Object.keys(native).sort()).toEqual(Object.keys(Layout).sort());
    for (const [field, value] of Object.entries(native)) {
      expect({ field, value: Layout[field as keyof typeof Layout] }).toEqual({ field, value });
    }
  });

  it('has the kinds, header flag bits and syscall family bits of the C header', () => {
    const wire = loadBinding().wireConstants();
    // C name = AMBER_ + the TypeScript name in upper snake case
    const cName = (prefix: string, name: string) => prefix + name.replace(/[A-Z]/g, (c) => '_' + c).toUpperCase();
    expect(wire.kinds).toEqual({
      ...Object.fromEntries(Object.entries(Kind).map(([name, v]) => [cName('AMBER_', name), v])),
      AMBER_KIND_MAX: KIND_MAX,
    });
    expect(wire.flags).toEqual(Object.fromEntries(Object.entries(RecordFlag).map(([name, v]) => [cName('AMBER_F_', name), v])));
    expect(wire.families).toEqual(Object.fromEntries(Object.entries(SyscallFamily).map(([name, v]) => [cName('AMBER_FAMILY_', name), v])));
    // flags share one byte, bits distinct
    const bits = Object.values(RecordFlag);
    expect(new Set(bits).size).toBe(bits.length);
    expect(bits.every((b) => b > 0 && b < 256)).toBe(true);
  });
});
