/**
 * The image, run as manifests/daemonset.yaml runs it: the same capabilities
 * (all dropped, the listed ones added), seccomp, host PID namespace,
 * read-only root, the same host paths at the same places (the data and
 * socket dirs are this test's own temp dirs), the ConfigMap's config and
 * rules. It traces a container's exec, and an agent starts and answers the
 * probe command the DaemonSet uses. Run by scripts/test-image.sh, which
 * builds the image and names it in AMBER_TEST_IMAGE.
 */
import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { find, hostPathMounts, MANIFESTS, podSpec, render, type Resource, TRACING_ONLY } from '../helpers/manifests';
import { podman, podmanEnv, type Container, startContainer, uniqueName } from '../helpers/podman';
import type { AmberEvent } from '../../src/sensor/events';

const IMAGE = process.env.AMBER_TEST_IMAGE;
if (!IMAGE) throw new Error('AMBER_TEST_IMAGE is not set: run npm run test:image (scripts/test-image.sh builds the image)');

const base = render(MANIFESTS);
const tracingOnly = render(TRACING_ONLY);

/** `podman run` options that give the container what the DaemonSet gives the pod. */
function runOptions(resources: Resource[], own: { data: string; run: string; etc?: string }): string[] {
  const spec = podSpec(find(resources, 'DaemonSet', 'amber'));
  const sc = spec.containers[0].securityContext;
  const opts = ['--pull=never', '--pid=host', '--network=none', '--read-only', '--tmpfs=/tmp', '--security-opt=seccomp=unconfined'];
  // the limits podman itself has: any other value names limits we lack CAP_SYS_RESOURCE to set
  // (podman then adds its own nproc and nofile defaults), and the tests' containers.conf sets none
  opts.push('--ulimit=host');
  opts.push(...sc.capabilities.drop.map((c: string) => `--cap-drop=${c}`), ...sc.capabilities.add.map((c: string) => `--cap-add=${c}`));
  for (const m of hostPathMounts(resources)) {
    // the test's own dirs stand in for the node's data and socket dirs
    const source = m.hostPath === '/var/lib/amber' ? own.data : m.hostPath === '/run/amber' ? own.run : m.hostPath;
    // kubelet makes a DirectoryOrCreate path that is missing (a runtime this host lacks); the test leaves the host as it is
    if (!fs.existsSync(source)) continue;
    opts.push(`--volume=${source}:${m.mountPath}:${m.readOnly ? 'ro' : 'rw'},rbind`);
  }
  if (own.etc) {
    const configMap = find(resources, 'ConfigMap', 'amber-config');
    fs.writeFileSync(path.join(own.etc, 'config.yaml'), configMap.data['config.yaml']);
    fs.writeFileSync(path.join(own.etc, 'rules.yaml'), configMap.data['rules.yaml']);
    opts.push(`--volume=${own.etc}/config.yaml:/etc/amber/config.yaml:ro`, `--volume=${own.etc}/rules.yaml:/app/rules/default.yaml:ro`);
    opts.push(`--volume=${own.etc}/tls:/etc/amber/tls:ro`);
  }
  return opts;
}


/** A CA and a server certificate for the API's TCP listener, as the amber-api-tls Secret would hold them. */
function makeTls(dir: string): void {
  fs.mkdirSync(dir);
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  const run = (...args: string[]) => execFileSync('openssl', args, { stdio: 'ignore' });
  run('req', '-x509', ...ec, '-keyout', `${dir}/ca.key`, '-out', `${dir}/ca.crt`, '-subj', '/CN=amber-image-test-ca', '-days', '1');
  run('req', ...ec, '-keyout', `${dir}/tls.key`, '-out', `${dir}/tls.csr`, '-subj', '/CN=amber');
  fs.writeFileSync(`${dir}/ext`, 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n');
  run('x509', '-req', '-in', `${dir}/tls.csr`, '-CA', `${dir}/ca.crt`, '-CAkey', `${dir}/ca.key`, '-CAcreateserial', '-out', `${dir}/tls.crt`, '-days', '1', '-extfile', `${dir}/ext`);
  fs.chmodSync(`${dir}/tls.key`, 0o644); // the Secret's default mode
}

/** `amber trace exec --local` in the image; `during` runs once it says it is tracing. */
function traceInImage(opts: string[], name: string, during: () => Promise<unknown>): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn('podman', ['run', '--rm', '--name', name, ...opts, IMAGE!, 'trace', 'exec', '--local', '-o', 'json', '--timeout', '6s'], {
      env: podmanEnv(),
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    let started = false;
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => {
      stderr += d.toString();
      if (!started && stderr.includes('amber: tracing')) {
        started = true;
        during().catch(reject);
      }
    });
    child.on('error', reject);
    child.on('exit', (code) => resolve({ code, stdout, stderr }));
  });
}

describe('the image, run as the DaemonSet runs it', () => {
  let work: string;
  let workload: Container;
  const started: string[] = [];

  beforeAll(async () => {
    work = fs.mkdtempSync(path.join(os.tmpdir(), 'amber-image-'));
    workload = await startContainer(uniqueName('amber-image-workload'));
  });
  afterAll(async () => {
    for (const name of started) await podman('rm', '-f', '-t', '0', name).catch(() => {});
    await workload?.remove();
    fs.rmSync(work, { recursive: true, force: true });
  });

  for (const [install, resources] of [
    ['full', base],
    ['tracing-only', tracingOnly],
  ] as const) {
    it(`traces a container's exec with the ${install} install's capabilities and mounts`, async () => {
      const own = { data: fs.mkdtempSync(path.join(work, 'data-')), run: fs.mkdtempSync(path.join(work, 'run-')) };
      const name = uniqueName('amber-image-trace');
      started.push(name);
      const marker = `amber-image-${install}`;
      const run = await traceInImage(runOptions(resources, own), name, () => workload.exec('/bin/sh', '-c', `echo ${marker}`));
      expect(run.code, run.stderr).toBe(0);
      const events = run.stdout.trim().split('\n').map((l) => JSON.parse(l) as AmberEvent & { containerId?: string; args: string[] });
      const exec = events.find((e) => e.type === 'exec' && e.args.join(' ') === `/bin/sh -c echo ${marker}`);
      expect(exec).toMatchObject({ type: 'exec', containerId: workload.id, filename: '/bin/sh', exePath: '/bin/busybox' });
      expect(run.stderr).toMatch(/^amber: \d+ events, \d+ written; drops: exec=0 /m);
    });
  }

  it("starts the agent with the ConfigMap's config, and the DaemonSet's probe finds it SERVING", async () => {
    const own = { data: fs.mkdtempSync(path.join(work, 'data-')), run: fs.mkdtempSync(path.join(work, 'run-')), etc: fs.mkdtempSync(path.join(work, 'etc-')) };
    makeTls(path.join(own.etc, 'tls'));
    const name = uniqueName('amber-image-agent');
    started.push(name);
    const ds = find(base, 'DaemonSet', 'amber');
    const c = ds.spec.template.spec.containers[0];
    await podman('run', '-d', '--name', name, '--env=AMBER_NODE_NAME=image-test-node', ...runOptions(base, own), IMAGE!, ...c.args);
    const probe = c.readinessProbe.exec.command as string[];
    let answer = '';
    const deadline = Date.now() + 60_000;
    while (Date.now() < deadline) {
      try {
        answer = await podman('exec', name, ...probe);
        break;
      } catch (err) {
        answer = (err as Error).message;
        await new Promise((r) => setTimeout(r, 1000));
      }
    }
    expect(answer, await podman('logs', name)).toBe('SERVING');
    // the socket is in the node's /run/amber, for the CLI on the node
    expect(fs.statSync(path.join(own.run, 'amber.sock')).isSocket()).toBe(true);
    const status = JSON.parse(await podman('exec', name, 'amber', 'status', '-o', 'json')) as { node: string };
    expect(status.node).toBe('image-test-node');
    await podman('stop', '-t', '30', name);
    expect(await podman('inspect', '-f', '{{.State.ExitCode}}', name)).toBe('0');
    // the buffer it wrote is in the node's data dir
    expect(fs.readdirSync(own.data).length).toBeGreaterThan(0);
  });
});
