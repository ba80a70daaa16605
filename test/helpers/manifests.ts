/**
 * manifests/ read the way kustomize renders them, for the tests: the
 * kustomization's resources with its namespace, labels and image set, and an
 * overlay's JSON 6902 patches (fast-json-patch, whose `test` operations fail
 * on a patch that no longer points where it should). Only the kustomization
 * fields manifests/ uses are understood; any other is an error, so this never
 * silently renders something kustomize would render differently.
 */
import fs from 'node:fs';
import path from 'node:path';
import jsonpatch, { type Operation } from 'fast-json-patch';
import { parse as parseYaml, parseAllDocuments } from 'yaml';

export const MANIFESTS = path.resolve(__dirname, '../../manifests');
export const TRACING_ONLY = path.join(MANIFESTS, 'overlays/tracing-only');

// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type Resource = { apiVersion: string; kind: string; metadata: { name: string; namespace?: string; labels?: Record<string, string> }; [k: string]: any };

const KUSTOMIZATION_FIELDS = ['apiVersion', 'kind', 'namespace', 'labels', 'resources', 'images', 'patches'];

export function readYamlDocuments(file: string): unknown[] {
  return parseAllDocuments(fs.readFileSync(file, 'utf8')).map((doc) => {
    if (doc.errors.length > 0) throw new Error(`${file}: ${doc.errors[0].message}`);
    return doc.toJS();
  });
}

/** The resources `kustomize build dir` gives, in order. */
export function render(dir: string): Resource[] {
  const k = parseYaml(fs.readFileSync(path.join(dir, 'kustomization.yaml'), 'utf8')) as Record<string, any>;
  const unknown = Object.keys(k).filter((f) => !KUSTOMIZATION_FIELDS.includes(f));
  if (unknown.length > 0) throw new Error(`${dir}/kustomization.yaml: fields this renderer does not know: ${unknown.join(', ')}`);
  if (k.apiVersion !== 'kustomize.config.k8s.io/v1beta1' || k.kind !== 'Kustomization') throw new Error(`${dir}/kustomization.yaml: not a Kustomization`);
  let resources: Resource[] = [];
  for (const entry of k.resources as string[]) {
    const p = path.resolve(dir, entry);
    if (fs.statSync(p).isDirectory()) resources.push(...render(p));
    else resources.push(...(readYamlDocuments(p) as Resource[]));
  }
  for (const r of resources) {
    // kustomize sets the namespace of namespaced kinds; cluster-scoped ones keep none
    if (k.namespace && !['Namespace', 'PriorityClass', 'ClusterRole', 'ClusterRoleBinding'].includes(r.kind)) r.metadata.namespace = k.namespace;
    for (const subject of r.kind === 'RoleBinding' ? r.subjects : []) if (subject.kind === 'ServiceAccount' && k.namespace) subject.namespace = k.namespace;
    for (const set of k.labels ?? []) {
      if (Object.keys(set).some((f) => f !== 'pairs')) throw new Error(`${dir}: labels entries with more than pairs are not rendered here`);
      r.metadata.labels = { ...r.metadata.labels, ...set.pairs };
    }
    for (const image of k.images ?? []) {
      for (const c of podSpec(r)?.containers ?? []) {
        if (c.image === image.name) c.image = `${image.newName ?? image.name}:${image.newTag}`;
      }
    }
  }
  for (const patch of k.patches ?? []) {
    const ops = parseYaml(fs.readFileSync(path.join(dir, patch.path), 'utf8')) as Operation[];
    const matching = resources.filter((r) => r.kind === patch.target.kind && r.metadata.name === patch.target.name);
    if (matching.length !== 1) throw new Error(`${dir}: patch ${patch.path} matches ${matching.length} resources`);
    const patched = jsonpatch.applyPatch(structuredClone(matching[0]), ops, true, false).newDocument;
    resources = resources.map((r) => (r === matching[0] ? patched : r));
  }
  return resources;
}

export function podSpec(r: Resource): any | undefined {
  return r.spec?.template?.spec;
}

export function find(resources: Resource[], kind: string, name: string): Resource {
  const found = resources.find((r) => r.kind === kind && r.metadata.name === name);
  if (!found) throw new Error(`no ${kind} ${name} in the rendered manifests`);
  return found;
}

/** The agent's container of the rendered DaemonSet. */
export function agentContainer(resources: Resource[]): any {
  return podSpec(find(resources, 'DaemonSet', 'amber')).containers[0];
}

/** The agent's config.yaml from the rendered ConfigMap. */
export function agentConfig(resources: Resource[]): Record<string, any> {
  return parseYaml(find(resources, 'ConfigMap', 'amber-config').data['config.yaml']);
}

/** Each host path the DaemonSet mounts: the path in the container, the host's path, read-only or not. */
export function hostPathMounts(resources: Resource[]): Array<{ mountPath: string; hostPath: string; readOnly: boolean }> {
  const spec = podSpec(find(resources, 'DaemonSet', 'amber'));
  const volumes = new Map<string, any>(spec.volumes.map((v: any) => [v.name, v]));
  return spec.containers[0].volumeMounts
    .filter((m: any) => volumes.get(m.name)?.hostPath)
    .map((m: any) => ({ mountPath: m.mountPath, hostPath: volumes.get(m.name).hostPath.path, readOnly: m.readOnly === true }));
}
