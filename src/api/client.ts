/**
 * A client of one agent's API (the CLI's side of src/api/server.ts): calls
 * with the messages decoded back into the events and incidents every command
 * prints.
 */
import fs from 'node:fs';
import * as grpc from '@grpc/grpc-js';
import { DEFAULT_API_SOCKET } from '../config';
import type { EventFilter } from '../filter';
import type { IncidentSummary, ResponseSummary, TriggerResult } from '../incident/incidents';
import type { AmberEvent } from '../sensor/events';
import { DROPPED_TRAILER, grpcTarget, type Listener, parseServerAddress } from './address';
import { filterToProto, fromProto } from './event-codec';
import { AmberClient, type PullIncidentResponse, type StatusResponse, type TraceResponse, type TriggerIncidentRequest } from './gen/amber';
import { incidentFromProto, responseFromProto } from './incident-codec';

export const DEFAULT_SERVER = `unix://${DEFAULT_API_SOCKET}`;

/** What a live stream yields: events in order, or a note that this many were dropped for this client. */
export type RemoteItem = { events: AmberEvent[] } | { dropped: number };

/** One target of `amber incidents trigger`: exactly one of them. */
export type IncidentTarget = { container: string } | { pod: string } | { pid: number };

/** An incident as GetIncident answers: the summary, and once complete the manifest's exact bytes and (when the agent gives it) their signature. */
export interface IncidentDetail {
  summary: IncidentSummary;
  manifest: Buffer | null;
  signature: Buffer | null;
}

/** A pull: the archive's size and sha256 as the agent sent them first, then its bytes. */
export interface IncidentPull {
  size: number;
  sha256: string;
  chunks: AsyncIterable<Buffer>;
}

/** How to reach agents over TCP: mutual TLS (PEM files) and, when the agent wants one, a bearer token. */
export interface ClientAuth {
  tls?: { ca: string; cert: string; key: string };
  /** A file holding the bearer token. */
  tokenFile?: string;
}

export class AgentClient {
  readonly address: Listener;
  private readonly client: AmberClient;
  private readonly calls = new Set<grpc.ClientReadableStream<unknown>>();
  private readonly metadata = () => new grpc.Metadata();

  constructor(server: string, auth: ClientAuth = {}) {
    this.address = parseServerAddress(server);
    let creds = grpc.credentials.createInsecure();
    if (this.address.kind === 'tcp') {
      if (!auth.tls) throw new Error(`${server}: TCP needs mutual TLS: give --tls-ca, --tls-cert and --tls-key`);
      const read = (f: string) => {
        try {
          return fs.readFileSync(f);
        } catch (err) {
          throw new Error(`cannot read ${f}: ${(err as Error).message}`);
        }
      };
      creds = grpc.credentials.createSsl(read(auth.tls.ca), read(auth.tls.key), read(auth.tls.cert));
      if (auth.tokenFile) {
        const token = read(auth.tokenFile).toString('utf8').trim();
        this.metadata = () => {
          const md = new grpc.Metadata();
          md.set('authorization', `Bearer ${token}`);
          return md;
        };
      }
    }
    this.client = new AmberClient(grpcTarget(this.address), creds, {
      'grpc.max_receive_message_length': 64 << 20,
    });
  }

  status(timeoutMs = 5000): Promise<StatusResponse> {
    return new Promise((resolve, reject) => {
      this.client.status({}, this.metadata(), { deadline: Date.now() + timeoutMs }, (err, res) => (err ? reject(err) : resolve(res)));
    });
  }

  triggerIncident(target: IncidentTarget, reason = '', timeoutMs = 30_000): Promise<TriggerResult> {
    const req: TriggerIncidentRequest = {
      reason,
      target:
        'container' in target
          ? { $case: 'container', container: target.container }
          : 'pod' in target
            ? { $case: 'pod', pod: target.pod }
            : { $case: 'pid', pid: target.pid },
    };
    return this.unary('triggerIncident', req, timeoutMs, (m: { id: string; joined: boolean; state: string }) => ({ id: m.id, joined: m.joined, state: m.state as TriggerResult['state'] }));
  }

  listIncidents(timeoutMs = 30_000): Promise<IncidentSummary[]> {
    return this.unary('listIncidents', {}, timeoutMs, (m: { incidents: Parameters<typeof incidentFromProto>[0][] }) => m.incidents.map(incidentFromProto));
  }

  getIncident(id: string, timeoutMs = 30_000): Promise<IncidentDetail> {
    return this.unary('getIncident', { id }, timeoutMs, (m: { incident?: Parameters<typeof incidentFromProto>[0]; manifest: Buffer; signature: Buffer }) => {
      if (!m.incident) throw new Error(`the agent answered GetIncident ${id} without the incident`);
      return {
        summary: incidentFromProto(m.incident),
        manifest: m.manifest.length > 0 ? m.manifest : null,
        signature: m.signature.length > 0 ? m.signature : null,
      };
    });
  }

  releaseIncident(id: string, timeoutMs = 30_000): Promise<ResponseSummary[]> {
    return this.unary('releaseIncident', { id }, timeoutMs, (m: { responses: Parameters<typeof responseFromProto>[0][] }) => m.responses.map(responseFromProto));
  }

  /** The archive of a complete incident; rejects (the agent's status) before any byte when it cannot be pulled. */
  async pullIncident(id: string): Promise<IncidentPull> {
    const call = this.client.pullIncident({ id }, this.metadata());
    const messages = this.read(call, (m: PullIncidentResponse) => m);
    const first = await messages.next();
    if (first.done) throw new Error(`the agent ended the pull of ${id} before it sent the archive's size`);
    async function* chunks(): AsyncGenerator<Buffer> {
      for await (const m of messages) yield m.data;
    }
    return { size: first.value.size, sha256: first.value.sha256, chunks: chunks() };
  }

  /** Live events; ends when the agent ends the stream (its trailer's drop total resolves `dropped`) or cancel() is called. */
  trace(filter: EventFilter, maxQueued = 0): { items: AsyncIterable<RemoteItem>; dropped: Promise<number | undefined> } {
    const call = this.client.trace({ filter: filterToProto(filter), maxQueued }, this.metadata());
    return { items: this.read(call, (m: TraceResponse) => (m.dropped > 0 ? { dropped: m.dropped } : { events: m.events.map(fromProto) })), dropped: trailer(call) };
  }

  /** The buffer's events that match, in time-ordered batches. */
  query(filter: EventFilter, limit = 0): AsyncIterable<AmberEvent[]> {
    const call = this.client.query({ filter: filterToProto(filter), limit }, this.metadata());
    return this.read(call, (m) => m.events.map(fromProto));
  }

  /** Ends every open stream of this client (their readers finish normally). */
  cancel(): void {
    for (const call of this.calls) call.cancel();
  }

  close(): void {
    this.cancel();
    this.client.close();
  }

  private unary<Req, M, T>(method: 'triggerIncident' | 'listIncidents' | 'getIncident' | 'releaseIncident', req: Req, timeoutMs: number, map: (m: M) => T): Promise<T> {
    const call = this.client[method].bind(this.client) as unknown as (
      req: Req,
      md: grpc.Metadata,
      opts: grpc.CallOptions,
      cb: (err: grpc.ServiceError | null, res: M) => void,
    ) => grpc.ClientUnaryCall;
    return new Promise((resolve, reject) => {
      call(req, this.metadata(), { deadline: Date.now() + timeoutMs }, (err, res) => {
        if (err) return reject(err);
        try {
          resolve(map(res));
        } catch (e) {
          reject(e);
        }
      });
    });
  }

  private async *read<M, T>(call: grpc.ClientReadableStream<M>, map: (m: M) => T): AsyncGenerator<T> {
    this.calls.add(call);
    try {
      for await (const m of call) yield map(m as M);
    } catch (err) {
      if ((err as grpc.ServiceError).code !== grpc.status.CANCELLED) throw err;
    } finally {
      this.calls.delete(call);
      call.cancel();
    }
  }
}

/** The drop total the agent sent in the trailer, when the stream ended with one. */
function trailer(call: grpc.ClientReadableStream<unknown>): Promise<number | undefined> {
  return new Promise((resolve) => {
    call.on('status', (s: grpc.StatusObject) => {
      const v = s.metadata?.get(DROPPED_TRAILER)[0];
      resolve(v === undefined ? undefined : Number(v));
    });
  });
}

/** A gRPC error as one line: the status name and what the agent said. */
export function describeError(err: unknown): string {
  const e = err as Partial<grpc.ServiceError>;
  if (typeof e.code === 'number') return `${grpc.status[e.code] ?? e.code}: ${e.details || e.message}`;
  return err instanceof Error ? err.message : String(err);
}
