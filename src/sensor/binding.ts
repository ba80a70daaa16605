/** The native addon (native/), typed. All policy lives in TypeScript; this is only the shape. */
import path from 'node:path';

export interface NativeSensorOptions {
  programs: string[];
  ringBytes?: number;
  wakeupBytes?: number;
  /** Leave out the calling process, by the tgid the kernel knows it by. */
  ignoreSelf?: boolean;
  ovlByInodeSize?: boolean;
  /** AMBER_FAMILY_* bits: what the sys_exit dispatcher hands on (1 file, 2 net). */
  syscallFamilies?: number;
  cgroupPath?: string;
  batchBytes?: number;
  batchCount?: number;
  pollMs?: number;
}

export interface NativeReaderStats {
  records: number;
  bytes: number;
  batches: number;
  /** Times the reader waited for JavaScript to hand a batch back. */
  stalls: number;
}

export interface NativeSensor {
  /** Loads and attaches; rejects with an Error carrying code, errno and libbpf's message. */
  start(): Promise<void>;
  /** Detaches and frees everything; resolves once every batch has reached onBatch. */
  stop(): Promise<void>;
  /** Per enum amber_kind: records the ring had no room for. */
  drops(): number[];
  stats(): NativeReaderStats;
  programs(): string[];
}

export interface NativeBinding {
  Sensor: new (options: NativeSensorOptions, onBatch: (batch: Buffer) => void) => NativeSensor;
  layout(): Record<string, number>;
  /** Event kinds, header flag bits and syscall family bits by their C names (bpf/events.h). */
  wireConstants(): { kinds: Record<string, number>; flags: Record<string, number>; families: Record<string, number> };
  bootToEpochNs(): number;
  /** The buffer's data-dir primitives (native/src/lock.cc). */
  files: NativeFiles;
}

export interface NativeFiles {
  /** flock(LOCK_EX|LOCK_NB): true when taken, false when another open file holds it. */
  lock(fd: number): boolean;
  /** lseek(SEEK_DATA): the first offset >= `offset` holding data, -1 when none. */
  seekData(fd: number, offset: number): number;
  /** lseek(SEEK_HOLE): the first offset >= `offset` where a hole starts (the end counts), -1 when past the end. */
  seekHole(fd: number, offset: number): number;
  /** fgetxattr: the value, or null when the file (or its filesystem) has no such attribute. */
  getxattr(fd: number, name: string): Buffer | null;
}

/** build/native/Release/amber_native.node, from src/ or from dist/src/. */
export function loadBinding(): NativeBinding {
  const candidates = [
    path.resolve(__dirname, '../../build/native/Release/amber_native.node'),
    path.resolve(__dirname, '../../../build/native/Release/amber_native.node'),
  ];
  let lastError: unknown;
  for (const file of candidates) {
    try {
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      return require(file) as NativeBinding;
    } catch (err) {
      lastError = err;
      if ((err as NodeJS.ErrnoException).code !== 'MODULE_NOT_FOUND') throw err;
    }
  }
  throw new Error(`the native addon is not built (run npm run build:native): ${String(lastError)}`);
}
