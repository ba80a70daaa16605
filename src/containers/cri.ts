/**
 * A client of the Kubernetes CRI (runtime.v1) on containerd's or CRI-O's
 * socket: which pod a container belongs to. The .proto is Amber's minimal
 * copy of the upstream messages (cri.proto), loaded at run time with
 * @grpc/proto-loader. Every call has a deadline: a socket that hangs costs
 * one lookup its time, never the event pipeline.
 */
import * as fs from 'fs';
import * as path from 'path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';

/** The usual CRI sockets, tried in order. */
export const DEFAULT_CRI_SOCKETS = ['/run/containerd/containerd.sock', '/run/crio/crio.sock', '/var/run/crio/crio.sock'];

export interface PodMetadata {
  name: string;
  namespace: string;
  uid: string;
  labels: Record<string, string>;
}

export interface CriContainer {
  /** The pod's sandbox; for a sandbox (pause) container its own ID. */
  podSandboxId: string;
  /** "" for a sandbox container. */
  name: string;
  image: string;
  /** The image's ID where the runtime fills Container.image_id (newer CRIs), else its image_ref. */
  imageId: string;
  pod: PodMetadata | null;
}

/** Where the .proto files are: beside this file in src/, or src/ seen from dist/src/. */
export function protoPath(file: string): string {
  const beside = path.join(__dirname, file);
  if (fs.existsSync(beside)) return beside;
  return path.resolve(__dirname, '../../../src/containers', file);
}

const LOADER_OPTIONS: protoLoader.Options = { keepCase: false, longs: String, enums: String, defaults: true, oneofs: false };

/** A service constructor ("runtime.v1.RuntimeService") from one of Amber's .proto files, or one at an absolute path. */
export function loadService(file: string, service: string): grpc.ServiceClientConstructor {
  const definition = protoLoader.loadSync(path.isAbsolute(file) ? file : protoPath(file), LOADER_OPTIONS);
  const loaded = grpc.loadPackageDefinition(definition);
  let node: unknown = loaded;
  for (const part of service.split('.')) node = (node as Record<string, unknown>)[part];
  if (typeof node !== 'function') throw new Error(`${file} defines no service ${service}`);
  return node as grpc.ServiceClientConstructor;
}

export function unixTarget(socket: string): string {
  return `unix://${path.resolve(socket)}`;
}

/** One unary call with a deadline, as a Promise. */
export function unaryCall<T>(
  client: grpc.Client,
  method: string,
  request: object,
  timeoutMs: number,
  metadata = new grpc.Metadata(),
): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const fn = (client as unknown as Record<string, Function>)[method];
    if (typeof fn !== 'function') {
      reject(new Error(`no method ${method}`));
      return;
    }
    fn.call(client, request, metadata, { deadline: Date.now() + timeoutMs }, (err: grpc.ServiceError | null, res: T) => {
      if (err) reject(err);
      else resolve(res);
    });
  });
}

interface WireContainer {
  id: string;
  podSandboxId: string;
  metadata: { name: string } | null;
  image: { image: string } | null;
  imageRef: string;
  imageId: string;
  labels: Record<string, string>;
}

interface WireSandboxStatus {
  status: {
    id: string;
    metadata: { name: string; uid: string; namespace: string } | null;
    labels: Record<string, string>;
  } | null;
}

export class CriClient {
  private readonly client: grpc.Client;

  constructor(
    readonly socket: string,
    private readonly timeoutMs: number,
  ) {
    const Service = loadService('cri.proto', 'runtime.v1.RuntimeService');
    this.client = new Service(unixTarget(socket), grpc.credentials.createInsecure());
  }

  async version(): Promise<{ runtimeName: string; runtimeVersion: string; runtimeApiVersion: string }> {
    return unaryCall(this.client, 'Version', { version: 'v1' }, this.timeoutMs);
  }

  async pod(podSandboxId: string): Promise<PodMetadata | null> {
    try {
      const res = await unaryCall<WireSandboxStatus>(this.client, 'PodSandboxStatus', { podSandboxId }, this.timeoutMs);
      const meta = res.status?.metadata;
      if (!meta) return null;
      return { name: meta.name, namespace: meta.namespace, uid: meta.uid, labels: { ...res.status?.labels } };
    } catch (err) {
      if ((err as grpc.ServiceError).code === grpc.status.NOT_FOUND) return null;
      throw err;
    }
  }

  /** The container and its pod, or null when this runtime's CRI knows neither a container nor a sandbox by that ID. */
  async container(containerId: string): Promise<CriContainer | null> {
    const res = await unaryCall<{ containers: WireContainer[] }>(
      this.client,
      'ListContainers',
      { filter: { id: containerId } },
      this.timeoutMs,
    );
    // the filter also matches ID prefixes: keep the exact one
    const found = res.containers.find((c) => c.id === containerId);
    if (found) {
      return {
        podSandboxId: found.podSandboxId,
        name: found.metadata?.name ?? '',
        image: found.image?.image ?? '',
        imageId: found.imageId || found.imageRef,
        pod: found.podSandboxId ? await this.pod(found.podSandboxId) : null,
      };
    }
    // a sandbox's own (pause) container is no CRI container
    const pod = await this.pod(containerId);
    return pod ? { podSandboxId: containerId, name: '', image: '', imageId: '', pod } : null;
  }

  close(): void {
    this.client.close();
  }
}
