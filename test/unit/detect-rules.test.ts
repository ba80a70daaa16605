/**
 * The rule language and the default rules: each default rule fires on a
 * positive case and stays silent on its near miss; exceptions suppress;
 * invalid files fail naming the file, the rule and the field.
 */
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import type { ContainerMetadata } from '../../src/containers/metadata';
import { ProcessTable } from '../../src/detect/process-table';
import { compileRules, defaultRulesFile, loadRules, type RuleContext, type RuleSet } from '../../src/detect/rules';
import type { AmberEvent, DriftEvent } from '../../src/sensor/events';
import { CONTAINER_A, connectEvent, dnsEvent, execEvent, forkEvent, openEvent, T0 } from '../helpers/buffer-events';

const DEFAULT_RULES = path.join(__dirname, '..', '..', 'rules', 'default.yaml');

function context(md: Partial<ContainerMetadata> = {}): RuleContext {
  // a /proc that does not exist: the table knows only what the events said
  const processes = new ProcessTable(1000, '/nonexistent-proc');
  const meta: ContainerMetadata = {
    containerId: CONTAINER_A, runtime: 'podman', name: 'web-1', image: 'localhost/shop:2', imageId: 'sha256:abc',
    startedAt: '2024-05-01T11:00:00.000Z', initPid: 10, overlay: null, pod: null, removedAt: '', errors: [], ...md,
  };
  return { processes, container: (id) => (id === CONTAINER_A ? meta : undefined) };
}

function driftEvent(over: Partial<DriftEvent> = {}): DriftEvent {
  const exec = execEvent(T0, { pid: 300, exePath: '/tmp/x', filename: '/tmp/x', upperLayer: true });
  return {
    type: 'drift', ts: exec.ts, pid: exec.pid, tid: exec.tid, ppid: exec.ppid, uid: 0, gid: 0, comm: 'x', cgroupId: exec.cgroupId,
    containerId: exec.containerId, mntns: exec.mntns, netns: exec.netns, action: 'record', rules: [], reason: 'upper-layer',
    subject: 'executable', path: '/tmp/x', change: 'created', file: null, mtimeSinceStartNs: null, ctimeSinceStartNs: null,
    imageFile: null, sha256: '', hashedBytes: 0, hashError: '', hashedFrom: '', exec: { filename: '/tmp/x', exePath: '/tmp/x', args: ['x'], script: '' },
    ancestry: [], containerMetadata: null, ...over,
  };
}

function decide(rules: RuleSet, ctx: RuleContext, ev: AmberEvent) {
  ctx.processes.observe(ev);
  return rules.evaluate(ev, ctx);
}

describe('default rules', () => {
  const rules = loadRules(DEFAULT_RULES, { lists: { blocklist_cidrs: ['203.0.113.0/24', '2001:db8:bad::/48'] } });

  it('compiles every rule of the shipped file, found where the agent looks for it', () => {
    expect(defaultRulesFile()).toBe(DEFAULT_RULES);
    expect(rules.names).toEqual([
      'drift', 'shell-from-server', 'write-system-path', 'sa-token-read', 'blocklist-dns', 'blocklist-connect', 'dns-txt-tunnel',
    ]);
  });

  it('drift: every drift finding opens an incident; other events are not drift', () => {
    const ctx = context();
    expect(rules.evaluate(driftEvent(), ctx)).toEqual({ action: 'incident', rules: ['drift'] });
    expect(rules.evaluate(driftEvent({ reason: 'fileless', change: 'fileless' }), ctx)).toEqual({ action: 'incident', rules: ['drift'] });
    expect(decide(rules, ctx, execEvent(T0, { exePath: '/tmp/x', filename: '/tmp/x' }))).toBeNull();
  });

  it('shell-from-server: sh under nginx alerts; sh under bash, or a host nginx, does not', () => {
    const ctx = context();
    decide(rules, ctx, execEvent(T0, { pid: 50, ppid: 10, comm: 'nginx', exePath: '/usr/sbin/nginx', args: ['nginx'] }));
    decide(rules, ctx, forkEvent(T0 + 1, { pid: 50, comm: 'nginx', childPid: 51 }));
    const sh = execEvent(T0 + 2, { pid: 51, ppid: 50, comm: 'sh', exePath: '/bin/busybox', filename: '/bin/sh', args: ['sh', '-c', 'id'] });
    expect(decide(rules, ctx, sh)).toEqual({ action: 'alert', rules: ['shell-from-server'] });

    decide(rules, ctx, execEvent(T0, { pid: 60, ppid: 10, comm: 'bash', exePath: '/bin/bash', args: ['bash'] }));
    expect(decide(rules, ctx, execEvent(T0 + 3, { pid: 61, ppid: 60, comm: 'sh', args: ['sh'] }))).toBeNull();
    // near miss: nginx runs a non-shell
    expect(decide(rules, ctx, execEvent(T0 + 4, { pid: 52, ppid: 50, comm: 'cat', args: ['cat'] }))).toBeNull();
    // host processes are out of the rule's (default) container scope
    decide(rules, ctx, execEvent(T0, { pid: 70, ppid: 1, comm: 'nginx', containerId: '' }));
    expect(decide(rules, ctx, execEvent(T0 + 5, { pid: 71, ppid: 70, comm: 'sh', containerId: '' }))).toBeNull();
    // the exception: a node app's npm script
    expect(decide(rules, ctx, execEvent(T0 + 6, { pid: 53, ppid: 50, comm: 'sh', args: ['sh', '-c', 'npm run build'] }))).toBeNull();
  });

  it('write-system-path: a write under /etc or a bin dir alerts; a read, a write elsewhere, or a package manager does not', () => {
    const ctx = context();
    const write = { flags: 0o1101, flagNames: ['O_WRONLY', 'O_CREAT', 'O_TRUNC'] };
    expect(decide(rules, ctx, openEvent(T0, { path: '/etc/passwd', ...write }))).toEqual({ action: 'alert', rules: ['write-system-path'] });
    expect(decide(rules, ctx, openEvent(T0, { path: '/usr/local/bin/kubectl', ...write }))).toEqual({ action: 'alert', rules: ['write-system-path'] });
    expect(decide(rules, ctx, openEvent(T0, { path: '/etc/passwd', flags: 0, flagNames: ['O_RDONLY'] }))).toBeNull();
    expect(decide(rules, ctx, openEvent(T0, { path: '/etc/passwd', flags: 0o2, flagNames: ['O_RDWR'] }))).toEqual({ action: 'alert', rules: ['write-system-path'] });
    expect(decide(rules, ctx, openEvent(T0, { path: '/tmp/etc/passwd', ...write }))).toBeNull();
    // apk (an ancestor) installing a package
    decide(rules, ctx, execEvent(T0, { pid: 80, ppid: 10, comm: 'apk', exePath: '/sbin/apk', args: ['apk', 'add', 'curl'] }));
    decide(rules, ctx, forkEvent(T0, { pid: 80, comm: 'apk', childPid: 81 }));
    decide(rules, ctx, execEvent(T0, { pid: 81, ppid: 80, comm: 'busybox', exePath: '/bin/busybox', args: ['busybox', '--install'] }));
    expect(decide(rules, ctx, openEvent(T0, { pid: 81, ppid: 80, comm: 'busybox', path: '/usr/bin/wget', ...write }))).toBeNull();
  });

  it('sa-token-read: curl reading the token alerts; kubectl, or the CA file, does not', () => {
    const ctx = context();
    const token = '/var/run/secrets/kubernetes.io/serviceaccount/token';
    expect(decide(rules, ctx, openEvent(T0, { comm: 'curl', path: token }))).toEqual({ action: 'alert', rules: ['sa-token-read'] });
    expect(decide(rules, ctx, openEvent(T0, { comm: 'cat', path: '/run/secrets/kubernetes.io/serviceaccount/..data/token' }))).toEqual({
      action: 'alert',
      rules: ['sa-token-read'],
    });
    expect(decide(rules, ctx, openEvent(T0, { comm: 'kubectl', path: token }))).toBeNull();
    expect(decide(rules, ctx, openEvent(T0, { comm: 'curl', path: '/var/run/secrets/kubernetes.io/serviceaccount/ca.crt' }))).toBeNull();
  });

  it('blocklist-dns: a query for a pool name alerts, also from the host; a look-alike name or the response does not', () => {
    const ctx = context();
    expect(decide(rules, ctx, dnsEvent(T0, { qr: 'Q', name: 'pool.minexmr.com', answers: [], rcode: '' }))).toEqual({
      action: 'alert',
      rules: ['blocklist-dns'],
    });
    expect(decide(rules, ctx, dnsEvent(T0, { qr: 'Q', name: 'xmr.nanopool.org', containerId: '' }))).toEqual({ action: 'alert', rules: ['blocklist-dns'] });
    expect(decide(rules, ctx, dnsEvent(T0, { qr: 'Q', name: 'pool.minexmr.com.example.org' }))).toBeNull();
    expect(decide(rules, ctx, dnsEvent(T0, { qr: 'R', name: 'pool.minexmr.com' }))).toBeNull();
  });

  it('blocklist-connect: the configured CIDRs (v4 and v6) alert; the next network does not', () => {
    const ctx = context();
    expect(decide(rules, ctx, connectEvent(T0, { daddr: '203.0.113.77' }))).toEqual({ action: 'alert', rules: ['blocklist-connect'] });
    expect(decide(rules, ctx, connectEvent(T0, { family: 6, daddr: '2001:db8:bad::1' }))).toEqual({ action: 'alert', rules: ['blocklist-connect'] });
    expect(decide(rules, ctx, connectEvent(T0, { daddr: '203.0.114.1' }))).toBeNull();
    expect(decide(rules, ctx, connectEvent(T0, { family: 6, daddr: '2001:db8:bae::1' }))).toBeNull();
    // the shipped file's own list is empty: nothing is blocklisted until the config says so
    const shipped = loadRules(DEFAULT_RULES);
    expect(shipped.evaluate(connectEvent(T0, { daddr: '203.0.113.77' }), ctx)).toBeNull();
  });

  it('dns-txt-tunnel: a TXT answer of 200 bytes alerts, 199 does not, nor a DKIM record', () => {
    const ctx = context();
    const txt = (n: number) => [{ type: 'TXT', data: `"${'a'.repeat(n - 2)}"` }];
    expect(decide(rules, ctx, dnsEvent(T0, { qtype: 'TXT', name: 'x1.t.example.org', answers: txt(200) }))).toEqual({
      action: 'alert',
      rules: ['dns-txt-tunnel'],
    });
    expect(decide(rules, ctx, dnsEvent(T0, { qtype: 'TXT', name: 'x1.t.example.org', answers: txt(199) }))).toBeNull();
    expect(decide(rules, ctx, dnsEvent(T0, { qtype: 'TXT', name: 's1._domainkey.example.org', answers: txt(400) }))).toBeNull();
    // a long A/CNAME answer is not TXT
    expect(decide(rules, ctx, dnsEvent(T0, { answers: [{ type: 'CNAME', data: `${'a'.repeat(250)}.example.org` }] }))).toBeNull();
  });
});

describe('rule language', () => {
  it('an exception on container metadata suppresses; the highest action of several rules wins', () => {
    // compiled per case: a rule set remembers each container's selector result (metadata does not change)
    const rules = () => compileRules(
      `version: 1
rules:
  - name: tmp-exec
    action: alert
    match: { type: exec, path: "/tmp/*" }
    except:
      - { container: { image: "localhost/ci-*" } }
  - name: tmp-exec-prod
    action: incident
    match: { type: exec, path: "/tmp/*", container: { namespace: prod } }
`,
      'inline.yaml',
    );
    const ev = execEvent(T0, { filename: '/tmp/tool', exePath: '/tmp/tool' });
    expect(rules().evaluate(ev, context())).toEqual({ action: 'alert', rules: ['tmp-exec'] });
    expect(rules().evaluate(ev, context({ image: 'localhost/ci-runner:1' }))).toBeNull();
    const pod = { name: 'web', namespace: 'prod', uid: 'u1', labels: {} };
    expect(rules().evaluate(ev, context({ pod }))).toEqual({ action: 'incident', rules: ['tmp-exec', 'tmp-exec-prod'] });
    expect(rules().evaluate(execEvent(T0, { filename: '/usr/bin/tool' }), context({ pod }))).toBeNull();
    // a container whose metadata is not known yet does not match a selector (and is asked again later)
    expect(rules().evaluate({ ...ev, containerId: 'f'.repeat(64) }, context({ pod }))).toEqual({ action: 'alert', rules: ['tmp-exec'] });
  });

  it('host scope, ports, flags and drift facts', () => {
    const rules = compileRules(
      `version: 1
rules:
  - { name: host-ssh, action: alert, match: { type: connect, scope: host, remote: { port: [22, 2222] } } }
  - { name: creat, action: alert, match: { type: open, scope: all, open: { flags: [O_CREAT, O_EXCL] } } }
  - { name: created-drift, action: incident, match: { type: drift, drift: { change: created } } }
`,
      'inline.yaml',
    );
    const ctx = context();
    expect(rules.evaluate(connectEvent(T0, { containerId: '', dport: 2222 }), ctx)).toEqual({ action: 'alert', rules: ['host-ssh'] });
    expect(rules.evaluate(connectEvent(T0, { dport: 22 }), ctx)).toBeNull(); // a container's
    expect(rules.evaluate(openEvent(T0, { flagNames: ['O_WRONLY', 'O_CREAT', 'O_EXCL'] }), ctx)).toEqual({ action: 'alert', rules: ['creat'] });
    expect(rules.evaluate(openEvent(T0, { flagNames: ['O_WRONLY', 'O_CREAT'] }), ctx)).toBeNull();
    expect(rules.evaluate(driftEvent(), ctx)).toEqual({ action: 'incident', rules: ['created-drift'] });
    expect(rules.evaluate(driftEvent({ change: 'modified' }), ctx)).toBeNull();
  });

  it('invalid files fail naming the file, the rule and the field', () => {
    const bad = (rule: string) => () => compileRules(`version: 1\nrules:\n${rule}`, '/etc/amber/rules.yaml');
    expect(bad('  - { name: r1, action: alert, match: { type: exek } }')).toThrow(
      /^\/etc\/amber\/rules\.yaml: rule "r1": match\.type: /,
    );
    expect(bad('  - { name: r2, action: alert, match: { type: open, pth: /etc } }')).toThrow(
      /^\/etc\/amber\/rules\.yaml: rule "r2": match: Unrecognized key: "pth"/,
    );
    expect(bad('  - { name: r3, action: page, match: { type: open } }')).toThrow(/^\/etc\/amber\/rules\.yaml: rule "r3": action: /);
    expect(bad('  - { name: r4, action: alert, match: { type: connect, remote: { cidr: 10.0.0.0/33 } } }')).toThrow(
      '/etc/amber/rules.yaml: rule "r4": match.remote.cidr: "10.0.0.0/33" is not an address or CIDR',
    );
    expect(bad('  - { name: r5, action: alert, match: { type: open, path: $nope } }')).toThrow(
      '/etc/amber/rules.yaml: rule "r5": match.path: no list named "nope"',
    );
    expect(bad('  - { name: r6, action: alert, match: { type: exec, dns: { name: x } } }')).toThrow(
      '/etc/amber/rules.yaml: rule "r6": match.dns: does not apply to exec events (only dns)',
    );
    expect(bad('  - { name: r7, action: alert, match: { comm: sh } }')).toThrow(
      '/etc/amber/rules.yaml: rule "r7": match.type: required: the event types the rule is about',
    );
    expect(bad('  - { name: r8, action: alert, match: { type: open }, except: [ { remote: { port: 99999 } } ] }')).toThrow(
      /^\/etc\/amber\/rules\.yaml: rule "r8": except\.0\.remote\.port/,
    );
    expect(() => compileRules('version: 1\nrules: [\n', 'broken.yaml')).toThrow(/^broken\.yaml: invalid YAML: /);
    expect(() => loadRules('/nonexistent/rules.yaml')).toThrow(/^\/nonexistent\/rules\.yaml: cannot read the rule file: ENOENT/);
  });
});
