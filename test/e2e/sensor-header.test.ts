/**
 * The common header of a record, field by field, against what /proc and
 * cgroupfs say about the process that caused it. The kernel side reads these
 * fields through the task's BTF pointer rather than the helpers, so each one
 * is checked against the kernel's own view. Real kernel, real processes.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { findCgroup2Root } from '../../src/sensor/preflight';
import { Sensor } from '../../src/sensor/sensor';
import { EventLog } from '../helpers/events';

/** Runs argv to completion under setpriv as uid/gid 65534; resolves with its pid. */
function runAsNobody(argv: string[]): Promise<number> {
  return new Promise((resolve, reject) => {
    const child = spawn('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', '--', ...argv], { stdio: 'ignore' });
    child.on('error', reject);
    child.on('exit', (code) => (code === 0 ? resolve(child.pid!) : reject(new Error(`${argv[0]} exited with ${code}`))));
  });
}

describe('the header of a record is the kernel view of its task', () => {
  const log = new EventLog();
  let sensor: Sensor;
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'amber-header-'));

  beforeAll(async () => {
    fs.chmodSync(tmp, 0o755);
    sensor = await Sensor.start({ types: ['open', 'exec'] }, log.push);
  });

  afterAll(async () => {
    await sensor?.stop();
    fs.rmSync(tmp, { recursive: true, force: true });
  });

  it('gives pid, tid, ppid, uid, gid, comm, cgroup and namespaces exactly', async () => {
    // a 16-character name: comm keeps the kernel's first 15
    const cat = path.join(tmp, 'amber-header-cat');
    fs.copyFileSync('/bin/cat', cat);
    fs.chmodSync(cat, 0o755);
    const marker = path.join(tmp, 'marker.txt');
    fs.writeFileSync(marker, 'x');
    fs.chmodSync(marker, 0o644);

    const pid = await runAsNobody([cat, marker]);
    const [e] = await log.waitFor('open', (e) => e.path === marker && e.pid === pid);

    // the child inherits this process's cgroup and namespaces
    const cgroupPath = fs.readFileSync('/proc/self/cgroup', 'utf8').split('\n').find((l) => l.startsWith('0::'))!.slice(3);
    const cgroupId = fs.statSync(path.join(findCgroup2Root(undefined, false), cgroupPath)).ino;
    expect(e).toMatchObject({
      pid,
      tid: pid,
      ppid: process.pid,
      uid: 65534,
      gid: 65534,
      comm: 'amber-header-ca',
      cgroupId,
      mntns: fs.statSync('/proc/self/ns/mnt').ino,
      netns: fs.statSync('/proc/self/ns/net').ino,
      containerId: '',
      ret: 3,
    });
  });

  it("gives a thread's own tid beside its process's pid", async () => {
    // fs.promises opens on a libuv pool thread, not the main thread
    const marker = path.join(tmp, 'threaded.txt');
    fs.writeFileSync(marker, 'x');
    const handle = await fs.promises.open(marker, 'r');
    await handle.close();
    // the read-only open, not writeFileSync's (that one ran on the main thread)
    const [e] = await log.waitFor('open', (e) => e.path === marker && (e.flags & 3) === fs.constants.O_RDONLY);
    expect(e.pid).toBe(process.pid);
    expect(e.tid).not.toBe(process.pid);
    expect(fs.readdirSync('/proc/self/task').map(Number)).toContain(e.tid);
    expect(e.comm).toBe(fs.readFileSync(`/proc/self/task/${e.tid}/comm`, 'utf8').trim());
  });
});
