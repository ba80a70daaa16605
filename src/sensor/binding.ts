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
  /** ELF core dumps of a process (native/src/core_dump.cc); used through src/incident/memory.ts. */
  core: NativeCore;
  /** The network cut's BPF object (native/src/netcut.cc), separate from the sensor's. */
  netcut: NativeNetcut;
}

export interface NativeCoreOptions {
  /** Bound on the mappings' bytes copied; a mapping that does not fit whole is skipped. */
  maxBytes: number;
  /** How long every thread gets to reach its ptrace stop (default 5000). */
  stopTimeoutMs?: number;
  /** How long onStopped gets to call resume (default 60000). */
  gateTimeoutMs?: number;
  /** pread size on /proc/<pid>/mem (default 8 MiB). */
  chunkBytes?: number;
}

export interface NativeCoreThread {
  tid: number;
  /** Program counter and stack pointer, "0x…". */
  pc: string;
  sp: string;
}

export interface NativeCoreRegion {
  /** "0x…": addresses can exceed 2^53 ([vsyscall]). */
  start: string;
  end: string;
  perms: string;
  /** Offset in the mapped file. */
  offset: number;
  dev: string;
  inode: number;
  path: string;
  /** Bytes in the core: the whole region, a prefix of it, or 0. */
  dumped: number;
  /** Why the rest (or all) of it is not in the core. */
  skipped?: string;
}

export interface NativeCoreResult {
  /** The core file's length. */
  bytes: number;
  dumpedBytes: number;
  comm: string;
  /** The signal a thread was stopped with (handed back on detach), 0 for none. */
  threads: (NativeCoreThread & { signal: number })[];
  regions: NativeCoreRegion[];
  stopMs: number;
  gateMs: number;
  copyMs: number;
}

export interface NativeCore {
  /**
   * Stops every thread of pid, calls onStopped(threads, resume) and waits for
   * resume() (resume(reason) aborts), then writes the core to fd (an empty
   * file) and detaches. Rejects with an Error carrying code and errno.
   */
  dump(
    pid: number,
    fd: number,
    options: NativeCoreOptions,
    onStopped?: (threads: NativeCoreThread[], resume: (error?: string) => void) => void,
  ): Promise<NativeCoreResult>;
}

export interface NativeCutLink {
  linkId: number;
  progId: number;
  /** The cgroup it is attached to; 0 once that cgroup is gone. */
  cgroupId: number;
}

export interface NativeNetcut {
  /**
   * Loads a fresh netcut object, attaches it to the cgroup (an fd of its cgroup v2 directory) in both
   * directions and pins both links and the drop counters in pinDir (an existing directory on bpffs),
   * then closes everything: only the pins hold the cut. Throws (code, errno) leaving nothing pinned.
   */
  attach(cgroupFd: number, pinDir: string): { ingress: NativeCutLink; egress: NativeCutLink };
  /** What pinDir's pins hold now (null: not pinned), from any process. */
  inspect(pinDir: string): {
    ingress: NativeCutLink | null;
    egress: NativeCutLink | null;
    drops: { ingress: number; egress: number } | null;
  };
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
