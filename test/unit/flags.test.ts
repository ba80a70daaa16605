import { describe, expect, it } from 'vitest';
import { openFlagNames } from '../../src/sensor/flags';

describe('openFlagNames', () => {
  it.each([
    [0, ['O_RDONLY']],
    [0o101, ['O_WRONLY', 'O_CREAT']],
    [0o2001101, ['O_WRONLY', 'O_CREAT', 'O_TRUNC', 'O_CLOEXEC']],
    [0o2200000 | 0o4000, ['O_RDONLY', 'O_NONBLOCK', 'O_DIRECTORY', 'O_CLOEXEC']],
    [2 | 0o2000, ['O_RDWR', 'O_APPEND']],
    [0o10000000, ['O_RDONLY', 'O_PATH']],
    [0x40000000 | 1, ['O_WRONLY', '0x40000000']],
  ])('%o → %j', (flags, names) => {
    expect(openFlagNames(flags)).toEqual(names);
  });
});
