/**
 * manifests/: every resource validated offline against the Kubernetes API
 * schemas, strictly (kubernetes-models checks types and enums but lets an
 * unknown field through, so a misspelt field is caught here against the
 * API's own field lists), and the agent's deployment checked against what
 * the agent uses: its capabilities, its host paths, its config.
 */
import fs from 'node:fs';
import path from 'node:path';
import * as k8s from '@kubernetes/client-node';
import { describe, expect, it } from 'vitest';
import { isMap, isSeq, parseDocument, type Node as YamlNode } from 'yaml';
import { ConfigMap, Namespace, Service, ServiceAccount } from 'kubernetes-models/v1';
import { DaemonSet } from 'kubernetes-models/apps/v1';
import { Role, RoleBinding } from 'kubernetes-models/rbac.authorization.k8s.io/v1';
import { PriorityClass } from 'kubernetes-models/scheduling.k8s.io/v1';
import { configSchema } from '../../src/config';
import { DEFAULT_CRI_SOCKETS } from '../../src/containers/cri';
import { DEFAULT_METADATA } from '../../src/containers/metadata';
import { K8S_DEFAULTS } from '../../src/api/k8s';
import { parseListenAddress } from '../../src/api/address';
import { agentConfig, agentContainer, find, hostPathMounts, MANIFESTS, podSpec, readYamlDocuments, render, type Resource, TRACING_ONLY } from '../helpers/manifests';

/** kubernetes-models' validating classes, by apiVersion and kind. */
const MODELS: Record<string, new (data: any) => { validate(): void }> = {
  'v1/Namespace': Namespace,
  'v1/ServiceAccount': ServiceAccount,
  'v1/ConfigMap': ConfigMap,
  'v1/Service': Service,
  'apps/v1/DaemonSet': DaemonSet,
  'rbac.authorization.k8s.io/v1/Role': Role,
  'rbac.authorization.k8s.io/v1/RoleBinding': RoleBinding,
  'scheduling.k8s.io/v1/PriorityClass': PriorityClass,
};
/** The client library's model of each kind: its attributeTypeMap is the API's field list. */
const TYPES: Record<string, string> = {
  Namespace: 'V1Namespace',
  ServiceAccount: 'V1ServiceAccount',
  ConfigMap: 'V1ConfigMap',
  Service: 'V1Service',
  DaemonSet: 'V1DaemonSet',
  Role: 'V1Role',
  RoleBinding: 'V1RoleBinding',
  PriorityClass: 'V1PriorityClass',
};
const SCALARS = new Set(['string', 'number', 'boolean', 'Date', 'IntOrString', 'any']);

/** Every field of `value` that the API's schema for `type` does not have, as paths. */
function unknownFields(value: unknown, type: string, at: string): string[] {
  if (value === null || value === undefined || SCALARS.has(type)) return [];
  const array = /^Array<(.+)>$/.exec(type);
  if (array) return Array.isArray(value) ? value.flatMap((v, i) => unknownFields(v, array[1], `${at}[${i}]`)) : [];
  const map = /^\{ \[key: string\]: (.+); \}$/.exec(type);
  if (map) return Object.entries(value as object).flatMap(([k, v]) => unknownFields(v, map[1], `${at}.${k}`));
  const model = (k8s as unknown as Record<string, { getAttributeTypeMap?: () => Array<{ baseName: string; type: string }> }>)[type];
  if (!model?.getAttributeTypeMap) throw new Error(`${at}: no schema for type ${type}`);
  if (typeof value !== 'object' || Array.isArray(value)) return [];
  const fields = new Map(model.getAttributeTypeMap().map((a) => [a.baseName, a.type]));
  return Object.entries(value).flatMap(([k, v]) => (fields.has(k) ? unknownFields(v, fields.get(k)!, `${at}.${k}`) : [`${at}.${k}`]));
}

/** Validates one resource as the API server would: types, enums, required fields, and no unknown field. */
function validateStrictly(r: Resource): void {
  const id = `${r.kind} ${r.metadata?.name}`;
  const Model = MODELS[`${r.apiVersion}/${r.kind}`];
  if (!Model) throw new Error(`${id}: ${r.apiVersion} ${r.kind} is not a kind this test knows`);
  new Model(structuredClone(r)).validate();
  const unknown = unknownFields(r, TYPES[r.kind], r.kind);
  if (unknown.length > 0) throw new Error(`${id}: unknown fields ${unknown.join(', ')}`);
}

const base = render(MANIFESTS);
const tracing = render(TRACING_ONLY);

/** The capabilities each deployment grants, exactly, and why (the comments in daemonset.yaml say the same). */
const CAPABILITIES = ['BPF', 'PERFMON', 'SYS_ADMIN', 'NET_ADMIN', 'SYS_PTRACE', 'DAC_READ_SEARCH'];
const TRACING_CAPABILITIES = ['BPF', 'PERFMON', 'SYS_ADMIN', 'NET_ADMIN', 'DAC_READ_SEARCH'];

/** `p` is at or under `dir`. */
function under(p: string, dir: string): boolean {
  return p === dir || p.startsWith(`${dir.replace(/\/$/, '')}/`);
}

/** Every host path the agent reads or writes: from its config, and the code's defaults for the host's own state. */
function hostPathsUsed(config: Record<string, any>): string[] {
  const files: string[] = [config.dataDir];
  for (const l of config.api.listen) {
    const listener = parseListenAddress(l);
    if (listener.kind === 'unix') files.push(path.dirname(listener.path));
  }
  if (config.incident.enabled) {
    files.push(config.incident.signingKeyFile, config.incident.bpffs);
    for (const sink of config.incident.upload.sinks) for (const [k, v] of Object.entries(sink)) if (k.endsWith('File')) files.push(v as string);
  }
  return [
    ...files,
    '/sys/kernel/btf/vmlinux',
    '/sys/kernel/tracing',
    '/sys/fs/cgroup',
    // /var/run is /run in the image (Debian)
    ...DEFAULT_CRI_SOCKETS.map((s) => s.replace(/^\/var\/run\//, '/run/')),
    DEFAULT_METADATA.containerd.socket,
    DEFAULT_METADATA.containerd.stateDir,
    DEFAULT_METADATA.podman.graphRoot,
    DEFAULT_METADATA.podman.runRoot,
  ];
}

/** Where each mounted path comes from: a host path, a ConfigMap or a Secret. */
function mountsOf(resources: Resource[]): Array<{ mountPath: string; source: string }> {
  const spec = podSpec(find(resources, 'DaemonSet', 'amber'));
  const volumes = new Map<string, any>(spec.volumes.map((v: any) => [v.name, v]));
  return spec.containers[0].volumeMounts.map((m: any) => {
    const v = volumes.get(m.name);
    const source = v.hostPath ? 'hostPath' : v.secret ? `secret ${v.secret.secretName}` : v.configMap ? 'configMap' : 'emptyDir';
    return { mountPath: m.mountPath, source };
  });
}

describe('manifests', () => {
  it('lists every manifest file in a kustomization, and every listed file exists', () => {
    const files = fs.readdirSync(MANIFESTS).filter((f) => f.endsWith('.yaml') && f !== 'kustomization.yaml');
    const listed = (readYamlDocuments(path.join(MANIFESTS, 'kustomization.yaml'))[0] as { resources: string[] }).resources;
    expect([...listed].sort()).toEqual(files.sort());
    expect(base.map((r) => `${r.kind}/${r.metadata.name}`)).toEqual([
      'Namespace/amber',
      'ServiceAccount/amber',
      'Role/amber-read-pods',
      'RoleBinding/amber-read-pods',
      'PriorityClass/amber-node-recorder',
      'ConfigMap/amber-config',
      'DaemonSet/amber',
      'Service/amber',
    ]);
  });

  it('validates every resource of both installs against the Kubernetes schemas, unknown fields included', () => {
    for (const r of [...base, ...tracing]) validateStrictly(r);
  });

  it('rejects a misspelt field, a wrong enum value and a wrong type', () => {
    const misspelt = structuredClone(find(base, 'DaemonSet', 'amber'));
    const c = misspelt.spec.template.spec.containers[0];
    c.securityContex = c.securityContext;
    delete c.securityContext;
    expect(() => validateStrictly(misspelt)).toThrow('unknown fields DaemonSet.spec.template.spec.containers[0].securityContex');
    const badEnum = structuredClone(find(base, 'DaemonSet', 'amber'));
    badEnum.spec.template.spec.containers[0].imagePullPolicy = 'Sometimes';
    expect(() => validateStrictly(badEnum)).toThrow(/imagePullPolicy/);
    const badType = structuredClone(find(base, 'Service', 'amber'));
    badType.spec.ports[0].port = 'seven';
    expect(() => validateStrictly(badType)).toThrow(/port/);
  });

  it('grants exactly the documented capabilities, each with its reason, and nothing privileged', () => {
    const sc = agentContainer(base).securityContext;
    expect(sc.privileged).toBe(false);
    expect(sc.allowPrivilegeEscalation).toBeUndefined(); // the API refuses false with SYS_ADMIN
    expect(sc.capabilities).toEqual({ drop: ['ALL'], add: CAPABILITIES });
    expect(agentContainer(tracing).securityContext.capabilities).toEqual({ drop: ['ALL'], add: TRACING_CAPABILITIES });
    const spec = podSpec(find(base, 'DaemonSet', 'amber'));
    expect([spec.hostPID, spec.hostNetwork, spec.hostIPC]).toEqual([true, undefined, undefined]);
    // the comment above each added capability in the file itself
    const doc = parseDocument(fs.readFileSync(path.join(MANIFESTS, 'daemonset.yaml'), 'utf8'));
    const add = doc.getIn(['spec', 'template', 'spec', 'containers', 0, 'securityContext', 'capabilities', 'add'], true) as YamlNode;
    expect(isSeq(add)).toBe(true);
    if (!isSeq(add)) return;
    // (the yaml library hangs the first item's comment on the list)
    const reasons = (add.items as YamlNode[]).map((item, i) => (i === 0 ? add.commentBefore : item.commentBefore)?.trim() ?? '');
    expect(reasons.map((r) => r.length > 10)).toEqual(CAPABILITIES.map(() => true));
  });

  it('mounts every host path the agent uses, at the same path, writable only where the agent writes', () => {
    for (const resources of [base, tracing]) {
      const mounts = hostPathMounts(resources);
      for (const m of mounts) expect(m.mountPath, `${m.hostPath} is seen at its own path`).toBe(m.hostPath);
      const all = mountsOf(resources);
      for (const used of hostPathsUsed(configSchema.parse(agentConfig(resources)))) {
        expect(all.some((m) => under(used, m.mountPath)), `${used} is mounted`).toBe(true);
      }
      const writable = mounts.filter((m) => !m.readOnly).map((m) => m.hostPath);
      expect(writable).toEqual(resources === base ? ['/var/lib/amber', '/run/amber', '/sys/fs/cgroup', '/sys/fs/bpf'] : ['/var/lib/amber', '/run/amber']);
    }
    expect(mountsOf(base).filter((m) => m.source.startsWith('secret'))).toEqual([
      { mountPath: '/etc/amber/tls', source: 'secret amber-api-tls' },
      { mountPath: '/etc/amber/signing', source: 'secret amber-signing-key' },
      { mountPath: '/etc/amber/sinks', source: 'secret amber-sinks' },
    ]);
    expect(mountsOf(tracing).filter((m) => m.source.startsWith('secret'))).toEqual([{ mountPath: '/etc/amber/tls', source: 'secret amber-api-tls' }]);
  });

  it("ships a config the agent's schema accepts, incidents on (tracing-only: off), and the default rules", () => {
    const config = agentConfig(base);
    const { incident, ...rest } = config;
    const parsed = configSchema.parse(config);
    expect(parsed.incident).toMatchObject({ enabled: true, signingKeyFile: '/etc/amber/signing/signing-key.pem', upload: { sinks: [] } });
    expect(incident.enabled).toBe(true);
    expect(parsed.api.listen).toEqual(['unix:///run/amber/amber.sock', `tcp://0.0.0.0:${K8S_DEFAULTS.port}`]);
    expect(parsed.metrics.listen).toBe('0.0.0.0:9464');
    const tracingConfig = agentConfig(tracing);
    expect(tracingConfig).toEqual({ ...rest, incident: { enabled: false } });
    expect(find(base, 'ConfigMap', 'amber-config').data['rules.yaml']).toBe(fs.readFileSync(path.resolve(MANIFESTS, '../rules/default.yaml'), 'utf8'));
  });

  it('wires ports, probes, labels and the Service to what the CLI and Prometheus look for', () => {
    const ds = find(base, 'DaemonSet', 'amber');
    const c = agentContainer(base);
    const [key, value] = K8S_DEFAULTS.selector.split('=');
    expect(ds.metadata.namespace).toBe(K8S_DEFAULTS.namespace);
    expect(ds.spec.template.metadata.labels[key]).toBe(value);
    expect(c.ports.map((p: any) => [p.name, p.containerPort])).toEqual([
      ['api', K8S_DEFAULTS.port],
      ['metrics', 9464],
    ]);
    expect(ds.spec.template.metadata.annotations).toEqual({ 'prometheus.io/scrape': 'true', 'prometheus.io/port': '9464', 'prometheus.io/path': '/metrics' });
    const probe = ['node', '/app/dist/src/cli/health.js', '--server', 'unix:///run/amber/amber.sock'];
    for (const p of [c.startupProbe, c.readinessProbe, c.livenessProbe]) expect(p.exec.command).toEqual(probe);
    const svc = find(base, 'Service', 'amber');
    expect(svc.spec.clusterIP).toBe('None');
    expect(svc.spec.selector).toEqual({ [key]: value });
    expect(ds.spec.updateStrategy).toEqual({ type: 'RollingUpdate', rollingUpdate: { maxUnavailable: 1, maxSurge: 0 } });
    expect(ds.spec.template.spec.tolerations).toEqual([{ operator: 'Exists' }]);
    expect(ds.spec.template.spec.priorityClassName).toBe(find(base, 'PriorityClass', 'amber-node-recorder').metadata.name);
    expect(c.resources).toEqual({ requests: { cpu: '100m', memory: '256Mi' }, limits: { cpu: '1', memory: '1Gi' } });
    expect(c.image).toBe('ghcr.io/amber-recorder/amber:0.1.0');
    // nothing cluster-wide: one namespaced Role that reads pods
    expect(base.filter((r) => r.kind.startsWith('Cluster'))).toEqual([]);
    expect(find(base, 'Role', 'amber-read-pods').rules).toEqual([{ apiGroups: [''], resources: ['pods'], verbs: ['get', 'list'] }]);
  });
});
