/**
 * `--k8s`: the agents of a cluster, found through the Kubernetes API (the
 * agents' pods by label; in-cluster config or kubeconfig). Each running pod
 * with an IP is one server, `podIP:port`, reached over TCP with mutual TLS.
 */
import { CoreV1Api, KubeConfig } from '@kubernetes/client-node';

export interface K8sDiscovery {
  namespace: string;
  /** Label selector of the agents' pods. */
  selector: string;
  /** The agents' API port (their tcp:// listener). */
  port: number;
  /** A kubeconfig file; default: KUBECONFIG, ~/.kube/config, or the in-cluster service account. */
  kubeconfig?: string;
}

export const K8S_DEFAULTS = { namespace: 'amber', selector: 'app.kubernetes.io/name=amber', port: 7443 } as const;

export interface DiscoveredAgent {
  /** The node the pod runs on. */
  node: string;
  pod: string;
  /** host:port for --server. */
  server: string;
}

export async function discoverAgents(opts: K8sDiscovery): Promise<DiscoveredAgent[]> {
  const kc = new KubeConfig();
  if (opts.kubeconfig) kc.loadFromFile(opts.kubeconfig);
  else kc.loadFromDefault();
  const api = kc.makeApiClient(CoreV1Api);
  const list = await api.listNamespacedPod({ namespace: opts.namespace, labelSelector: opts.selector });
  const agents: DiscoveredAgent[] = [];
  for (const pod of list.items) {
    const ip = pod.status?.podIP;
    if (pod.status?.phase !== 'Running' || !ip || pod.metadata?.deletionTimestamp) continue;
    agents.push({
      node: pod.spec?.nodeName ?? '',
      pod: pod.metadata?.name ?? '',
      server: `${ip.includes(':') ? `[${ip}]` : ip}:${opts.port}`,
    });
  }
  return agents.sort((a, b) => a.node.localeCompare(b.node));
}
