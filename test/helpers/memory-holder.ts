/** Containers running the memory holder (bench/memory-holder.ts), gdb on their cores, their cgroup and threads' state. */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { cgroupsOf } from '../../src/incident/freezer';
import { findCgroup2Root } from '../../src/sensor/preflight';

export { buildHolder, type Holder, startHolder } from '../../bench/memory-holder';

/** gdb in batch mode on a core, running `commands`. */
export function gdb(core: string, ...commands: string[]): string {
  return execFileSync('gdb', ['-batch', '-nx', '-c', core, ...commands.flatMap((c) => ['-ex', c])], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

export const V2_ROOT = findCgroup2Root(fs.readFileSync('/proc/self/mountinfo', 'utf8'), false);

/** The cgroup v2 directory of a process. */
export function v2Dir(pid: number): string {
  return path.join(V2_ROOT, cgroupsOf(fs.readFileSync(`/proc/${pid}/cgroup`, 'utf8')).v2!);
}

/** cgroup.freeze of a cgroup v2 directory: "1" while someone asked it frozen. */
export function freezeOf(dir: string): string {
  return fs.readFileSync(path.join(dir, 'cgroup.freeze'), 'utf8').trim();
}

/**
 * Each thread of pid: "live tracer 0" when it runs or sleeps untraced (after a dump: nobody traces it, none is
 * stopped); "stopped" for a (ptrace) stop. Running and sleeping are one: a thread just thawed may be either.
 */
export function threadStates(pid: number): string[] {
  return fs
    .readdirSync(`/proc/${pid}/task`)
    .sort()
    .map((tid) => {
      const status = fs.readFileSync(`/proc/${pid}/task/${tid}/status`, 'utf8');
      const state = /^State:\s+(\S)/m.exec(status)![1];
      return `${state === 't' || state === 'T' ? 'stopped' : 'live'} tracer ${/^TracerPid:\s+(\d+)/m.exec(status)![1]}`;
    });
}
