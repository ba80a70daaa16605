/**
 * Which process is which, fed from the exec/fork/exit events (host pids):
 * the detector's rules on parents and ancestors, and each finding's ancestry.
 * Bounded: past maxEntries the least recently started are forgotten (Map
 * order). A process the table never saw (older than the agent, or forgotten)
 * is read from /proc when a finding asks for its ancestry: rare, and never
 * on the per-event path.
 */
import { readFileSync, readlinkSync, statSync } from 'node:fs';
import type { AmberEvent, ProcessInfo } from '../sensor/events';

export const DEFAULT_MAX_PROCESSES = 65_536;
/** Ancestry depth at most: a loop or a very deep tree stops here. */
const MAX_DEPTH = 64;

export interface ProcessEntry extends ProcessInfo {
  /** "" for host processes, and for processes read from /proc (unknown there). */
  containerId: string;
  /** Mount namespace: where a container's processes end (its runtime's are in another). */
  mntns: number;
}

export class ProcessTable {
  private readonly procs = new Map<number, ProcessEntry>();
  /** Pids /proc did not have (a pid seen again later arrives through exec/fork and clears it). */
  private readonly missing = new Set<number>();

  constructor(
    private readonly maxEntries = DEFAULT_MAX_PROCESSES,
    private readonly procRoot = '/proc',
  ) {}

  get size(): number {
    return this.procs.size;
  }

  get(pid: number): ProcessEntry | undefined {
    return this.procs.get(pid);
  }

  /**
   * The table's entry, or else /proc's (kept in the table): for rules on
   * parents older than the agent. Misses are remembered (bounded) so a
   * stream of events from gone processes costs one failed read per pid.
   */
  lookup(pid: number): ProcessEntry | undefined {
    const known = this.procs.get(pid);
    if (known !== undefined || pid <= 0 || this.missing.has(pid)) return known;
    const p = this.fromProc(pid);
    if (p === undefined) {
      if (this.missing.size >= 4096) this.missing.clear();
      this.missing.add(pid);
      return undefined;
    }
    this.set(p);
    return p;
  }

  /** Updates the table from one event; other types are ignored. */
  observe(ev: AmberEvent): void {
    switch (ev.type) {
      case 'exec': {
        const known = this.procs.get(ev.pid);
        if (known) this.procs.delete(ev.pid); // re-inserted: most recent last
        this.set({ pid: ev.pid, ppid: ev.ppid, comm: ev.comm, exePath: ev.exePath, args: ev.args, containerId: ev.containerId, mntns: ev.mntns });
        break;
      }
      case 'fork': {
        if (ev.childPid === ev.pid) break; // a thread of the same process
        const parent = this.procs.get(ev.pid);
        this.procs.delete(ev.childPid);
        this.set({
          pid: ev.childPid,
          ppid: ev.pid,
          comm: ev.comm,
          exePath: parent?.exePath ?? '',
          args: parent?.args ?? [],
          containerId: ev.containerId,
          mntns: ev.mntns,
        });
        break;
      }
      case 'exit':
        this.procs.delete(ev.pid);
        break;
    }
  }

  /**
   * The process and its ancestors, nearest first, up to and including the
   * container's init (stopPid), or the first ancestor in another mount
   * namespace than the container's (excluded: the runtime's processes,
   * conmon, runc), or pid 1. Host processes (containerId "") go up to pid 1.
   */
  ancestry(pid: number, containerId: string, stopPid = 0, mntns = 0): ProcessInfo[] {
    const out: ProcessInfo[] = [];
    let cur = pid;
    for (let depth = 0; depth < MAX_DEPTH && cur > 0; depth++) {
      const p = this.lookup(cur);
      if (!p) break; // gone and never seen: the previous entry's ppid names it
      if (depth > 0 && containerId !== '') {
        if (p.containerId !== '' ? p.containerId !== containerId : mntns !== 0 && p.mntns !== mntns) break;
      }
      out.push({ pid: p.pid, ppid: p.ppid, comm: p.comm, exePath: p.exePath, args: p.args });
      if (cur === stopPid || cur === 1 || p.ppid === cur) break;
      cur = p.ppid;
    }
    return out;
  }

  private set(entry: ProcessEntry): void {
    this.missing.delete(entry.pid);
    this.procs.set(entry.pid, entry);
    if (this.procs.size > this.maxEntries) {
      const oldest = this.procs.keys().next().value as number;
      this.procs.delete(oldest);
    }
  }

  /** A process the events never introduced, from /proc (containerId unknown: ""). */
  private fromProc(pid: number): ProcessEntry | undefined {
    try {
      const status = readFileSync(`${this.procRoot}/${pid}/status`, 'latin1');
      const comm = /^Name:\t(.*)$/m.exec(status)?.[1] ?? '';
      const ppid = Number(/^PPid:\t(\d+)$/m.exec(status)?.[1] ?? 0);
      let exePath = '';
      try {
        exePath = readlinkSync(`${this.procRoot}/${pid}/exe`);
      } catch {
        // a kernel thread, or no permission: unknown
      }
      const cmdline = readFileSync(`${this.procRoot}/${pid}/cmdline`, 'utf8');
      const args = cmdline === '' ? [] : cmdline.replace(/\0$/, '').split('\0');
      let mntns = 0;
      try {
        mntns = statSync(`${this.procRoot}/${pid}/ns/mnt`).ino;
      } catch {
        // unknown
      }
      return { pid, ppid, comm, exePath, args, containerId: '', mntns };
    } catch {
      return undefined;
    }
  }
}
