export { EventBuffer, MAX_FREEZE_AFTER_NS } from './buffer';
export type { BufferOptions, BufferStats, BufferLog, LogLevel, VerifyResult } from './buffer';
export { DataDirError } from './datadir';
export { FreezeRefusedError } from './freeze';
export type { FreezeRequest, FrozenWindow } from './freeze';
export type { QueryFilter } from './query';
