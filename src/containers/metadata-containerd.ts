/**
 * containerd's own API for containers the CRI does not own (ctr, nerdctl):
 * the image a container was made from and its labels. containerd keeps these
 * only in its bolt database, which is not ours to open while it runs.
 */
import * as grpc from '@grpc/grpc-js';
import { loadService, unaryCall, unixTarget } from './cri';

export interface ContainerdContainer {
  image: string;
  /** The image's target digest (manifest or index), "" when the image is gone. */
  imageId: string;
  labels: Record<string, string>;
}

interface WireContainer {
  container: { id: string; image: string; labels: Record<string, string> } | null;
}

interface WireImage {
  image: { name: string; target: { digest: string } | null } | null;
}

export class ContainerdClient {
  private readonly containers: grpc.Client;
  private readonly images: grpc.Client;

  constructor(
    readonly socket: string,
    private readonly timeoutMs: number,
  ) {
    const target = unixTarget(socket);
    const Containers = loadService('metadata-containerd.proto', 'containerd.services.containers.v1.Containers');
    const Images = loadService('metadata-containerd-images.proto', 'containerd.services.images.v1.Images');
    this.containers = new Containers(target, grpc.credentials.createInsecure());
    // one connection for both services
    this.images = new Images(target, grpc.credentials.createInsecure(), { channelOverride: this.containers.getChannel() });
  }

  /** null when the namespace has no such container. */
  async container(namespace: string, id: string): Promise<ContainerdContainer | null> {
    const md = new grpc.Metadata();
    md.set('containerd-namespace', namespace);
    let res: WireContainer;
    try {
      res = await unaryCall<WireContainer>(this.containers, 'Get', { id }, this.timeoutMs, md);
    } catch (err) {
      if ((err as grpc.ServiceError).code === grpc.status.NOT_FOUND) return null;
      throw err;
    }
    const c = res.container;
    if (!c) return null;
    let imageId = '';
    if (c.image !== '') {
      try {
        const img = await unaryCall<WireImage>(this.images, 'Get', { name: c.image }, this.timeoutMs, md);
        imageId = img.image?.target?.digest ?? '';
      } catch (err) {
        if ((err as grpc.ServiceError).code !== grpc.status.NOT_FOUND) throw err;
      }
    }
    return { image: c.image, imageId, labels: { ...c.labels } };
  }

  close(): void {
    this.containers.close();
  }
}
