/**
 * A process's memory as evidence: an ELF core (memory/<pid>.core, readable by
 * gdb) and its maps at dump time with what was dumped or skipped and why
 * (memory/<pid>.maps.json). The addon stops every thread with ptrace and reads
 * the registers first, then (onStopped) the container's cgroup is frozen, then
 * the memory is copied; the cgroup is thawed whatever happened.
 *
 * Why that order: a task frozen by the cgroup v1 freezer never reaches a
 * ptrace stop (PTRACE_INTERRUPT waits forever), while a task already in a
 * ptrace stop freezes under both v1 and v2. (v2-frozen tasks do accept
 * PTRACE_INTERRUPT, so v2 would allow either order; one order serves both.)
 */
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { createExclusive, ensureDir } from '../buffer/datadir';
import { loadBinding, type NativeCoreRegion, type NativeCoreResult } from '../sensor/binding';
import type { CgroupFreezer, CgroupVersion, FrozenCgroup } from './freezer';

export const DEFAULT_MEMORY = {
  /** Bound on the bytes of mappings copied into one core. */
  maxBytes: 2 * 1024 ** 3,
  stopTimeoutMs: 5000,
  chunkBytes: 8 << 20,
} as const;

/** One mapping of /proc/<pid>/maps at dump time; `start`/`end` are "0x…" (they can exceed 2^53). */
export type MemoryRegion = NativeCoreRegion;

export interface MemoryThread {
  tid: number;
  /** Program counter and stack pointer when stopped, "0x…". */
  pc: string;
  sp: string;
  /** A signal being delivered when it stopped (handed back on detach), 0 for none. */
  signal: number;
}

export interface DumpOptions {
  /** The core, created exclusively (never through a link), 0600; its directory is created 0700 if missing. */
  corePath: string;
  /** The maps JSON (MapsFile), likewise. */
  mapsPath: string;
  /** Bound on the mappings' bytes in the core: a mapping that does not fit whole is skipped and listed. */
  maxBytes: number;
  /** Freezes the process's cgroup while its memory is copied. */
  freezer?: CgroupFreezer;
  stopTimeoutMs?: number;
  chunkBytes?: number;
}

export interface DumpResult {
  pid: number;
  comm: string;
  /** The core file's length (all-zero pages are holes). */
  bytes: number;
  /** Mapping bytes copied. */
  dumpedBytes: number;
  regions: MemoryRegion[];
  threads: MemoryThread[];
  /** Regions not in the core whole (each says why in `skipped`). */
  skipped: number;
  frozen: { path: string; version: CgroupVersion; alreadyFrozen: boolean; frozenMs: number } | null;
  durationMs: number;
  /** Time the threads took to stop, and to copy and write. */
  stopMs: number;
  copyMs: number;
}

/** memory/<pid>.maps.json */
export interface MapsFile {
  pid: number;
  comm: string;
  /** RFC 3339. */
  dumpedAt: string;
  maxBytes: number;
  /** The core's file name, beside this file. */
  core: string;
  bytes: number;
  dumpedBytes: number;
  threads: MemoryThread[];
  frozen: DumpResult['frozen'];
  regions: MemoryRegion[];
}

export class MemoryDumpError extends Error {
  override name = 'MemoryDumpError';
  constructor(
    message: string,
    readonly code?: string,
  ) {
    super(message);
  }
}

/**
 * Dumps pid's memory to corePath (ELF core) and mapsPath (MapsFile). Rejects
 * with a MemoryDumpError naming the step and the reason; on rejection neither
 * file is left and the process runs on as before (detached, cgroup thawed).
 */
export async function dumpProcessMemory(pid: number, options: DumpOptions): Promise<DumpResult> {
  const started = performance.now();
  if (!Number.isInteger(pid) || pid <= 0) throw new MemoryDumpError(`pid must be a positive integer, not ${pid}`, 'EINVAL');
  if (typeof options.maxBytes !== 'number' || !Number.isSafeInteger(options.maxBytes) || options.maxBytes < 0) {
    throw new MemoryDumpError(`maxBytes must be a whole number of bytes >= 0, not ${String(options.maxBytes)}`, 'EINVAL');
  }
  const native = loadBinding().core;
  for (const file of new Set([path.dirname(options.corePath), path.dirname(options.mapsPath)])) await ensureDir(file, false);
  const core = await createExclusive(options.corePath);
  let maps: fsp.FileHandle | undefined;
  let freezing: Promise<FrozenCgroup> | undefined;
  let result: NativeCoreResult;
  let frozen: FrozenCgroup | null = null;
  try {
    maps = await createExclusive(options.mapsPath);
    const freezer = options.freezer;
    try {
      result = await native.dump(
        pid,
        core.fd,
        {
          maxBytes: options.maxBytes,
          stopTimeoutMs: options.stopTimeoutMs ?? DEFAULT_MEMORY.stopTimeoutMs,
          chunkBytes: options.chunkBytes ?? DEFAULT_MEMORY.chunkBytes,
        },
        freezer
          ? (_threads, resume) => {
              freezing = freezer.freeze(pid);
              freezing.then(
                () => resume(),
                (err: Error) => resume(`cannot freeze the cgroup of process ${pid}: ${err.message}`),
              );
            }
          : undefined,
      );
    } catch (err) {
      const e = err as Error & { code?: string };
      throw new MemoryDumpError(`memory dump of process ${pid}: ${e.message}`, e.code);
    } finally {
      // The freeze may still be settling (the addon gave up waiting): thaw once it has.
      if (freezing) {
        frozen = await freezing.catch(() => null);
        await frozen?.thaw();
      }
    }
    await core.sync();
    const dumpedAt = new Date().toISOString();
    const threads = result.threads.map(({ tid, pc, sp, signal }) => ({ tid, pc, sp, signal }));
    const frozenInfo = frozen
      ? { path: frozen.path, version: frozen.version, alreadyFrozen: frozen.alreadyFrozen, frozenMs: frozen.frozenMs }
      : null;
    const mapsFile: MapsFile = {
      pid,
      comm: result.comm,
      dumpedAt,
      maxBytes: options.maxBytes,
      core: path.basename(options.corePath),
      bytes: result.bytes,
      dumpedBytes: result.dumpedBytes,
      threads,
      frozen: frozenInfo,
      regions: result.regions,
    };
    await maps.writeFile(`${JSON.stringify(mapsFile, null, 1)}\n`);
    await maps.sync();
    return {
      pid,
      comm: result.comm,
      bytes: result.bytes,
      dumpedBytes: result.dumpedBytes,
      regions: result.regions,
      threads,
      skipped: result.regions.filter((r) => r.skipped !== undefined).length,
      frozen: frozenInfo,
      durationMs: performance.now() - started,
      stopMs: result.stopMs,
      copyMs: result.copyMs,
    };
  } catch (err) {
    // created here, incomplete: nothing half-written is left to be mistaken for evidence
    await fsp.unlink(options.corePath).catch(() => {});
    if (maps) await fsp.unlink(options.mapsPath).catch(() => {});
    throw err;
  } finally {
    await core.close();
    await maps?.close();
  }
}
