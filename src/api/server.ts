/**
 * The agent's gRPC API (amber.v1, src/api/amber.proto) and the standard
 * health service, on unix sockets (and TCP with mutual TLS).
 *
 * Trace streams are pipeline subscribers with bounded queues: a slow client
 * loses events, counted and told to it, and never slows the sensor or the
 * buffer. Requests are bounded in size, count and time; a request that
 * cannot be decoded or does not validate gets INVALID_ARGUMENT, never a crash.
 * Incidents are served from the agent's Incidents (src/incident/incidents.ts)
 * when it has them; their archives stream as one of the client's streams.
 */
import { timingSafeEqual } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { HealthImplementation } from 'grpc-health-check';
import type { EventBuffer } from '../buffer';
import { openRegular } from '../buffer/datadir';
import { compileFilter, type EventFilter, splitContainerFilter, validateFilter } from '../filter';
import { IncidentError, type Incidents } from '../incident/incidents';
import type { Pipeline } from '../pipeline/pipeline';
import { SENSOR_EVENT_TYPES, type AmberEvent } from '../sensor/events';
import type { Sensor } from '../sensor/sensor';
import { filterFromProto, toProto } from './event-codec';
import {
  AmberService,
  type GetIncidentRequest,
  type GetIncidentResponse,
  type ListIncidentsRequest,
  type ListIncidentsResponse,
  type PullIncidentRequest,
  type PullIncidentResponse,
  type QueryRequest,
  type QueryResponse,
  type StatusRequest,
  type ReleaseIncidentRequest,
  type ReleaseIncidentResponse,
  type StatusResponse,
  type TraceRequest,
  type TraceResponse,
  type TriggerIncidentRequest,
  type TriggerIncidentResponse,
} from './gen/amber';
import { checkIncidentId, incidentErrorStatus, incidentToProto, PULL_CHUNK_BYTES, responseToProto, triggerRequestFromProto } from './incident-codec';
import { DROPPED_TRAILER, type Listener, parseListenAddress } from './address';
import { AMBER_VERSION } from './version';

/** Events per response message: big enough to amortize framing, small enough to stay far below message limits. */
export const EVENTS_PER_MESSAGE = 256;
export const SERVICE_NAME = 'amber.v1.Amber';

export interface ApiOptions {
  listen: string[];
  nodeName: string;
  maxStreamsPerClient: number;
  maxRequestBytes: number;
  traceQueue: number;
  queryTimeout: number;
  /** Mutual TLS for TCP listeners: PEM files, re-read every refreshInterval ms (rotated secrets). */
  tls?: { ca: string; cert: string; key: string; refreshInterval: number };
  /** A file holding the bearer token TCP callers must send. */
  tokenFile?: string;
}

export interface ApiParts {
  pipeline: Pipeline;
  buffer: EventBuffer;
  sensor: Sensor;
  /** The agent's incidents; without them the incident calls answer UNAVAILABLE. */
  incidents?: Incidents;
}

export const INCIDENTS_OFF = 'incidents are off on this agent';

export type ApiLog = (level: 'info' | 'warn', obj: Record<string, unknown>, msg: string) => void;
/** Told when each call ends: its method, gRPC status name and duration (the metrics). */
export type ObserveRequest = (method: string, code: string, seconds: number) => void;

export interface ApiServer {
  /** Where it listens, as configured (unix://..., tcp://host:port with the bound port). */
  readonly addresses: string[];
  /** The health service's answer: SERVING while the sensor runs. */
  setServing(serving: boolean): void;
  activeStreams(): number;
  /** Ends every call and stops listening. Idempotent. */
  close(): Promise<void>;
}

/** grpc-js's call.getAuthContext() (its type is not exported): 'ssl' on TLS connections, with the client's certificate. */
type AuthContext = { transportSecurityType?: string; sslPeerCertificate?: { subject?: { CN?: string | string[] } } };
/** Bound on a requester's name as the manifest records it (a certificate's CN is at most 64 by X.509, but a CA may sign anything). */
const MAX_REQUESTER_CHARS = 256;

/** What a request decoded into, or why it could not be. */
type Decoded<T> = T | { invalid: string };
const isInvalid = <T>(d: Decoded<T>): d is { invalid: string } =>
  typeof d === 'object' && d !== null && 'invalid' in d && Object.keys(d).length === 1;

/** Container IDs are hex (src/containers/cgroup-path.ts); anything else is refused before it goes anywhere. */
const CONTAINER_PREFIX = /^[0-9a-f]{1,64}$/;
/** The kernel's TASK_COMM_LEN is 16 (15 characters and a NUL). */
const MAX_COMM_BYTES = 15;
const MAX_MATCH_BYTES = 4096;
/** Pod names and namespaces are DNS labels/subdomains (at most 253); image references are bounded alike. */
const MAX_CONTAINER_FIELD_BYTES = 1024;

/** The filter a request asks for, checked; a RangeError says what is wrong. */
export function requestFilter(message: Parameters<typeof filterFromProto>[0]): EventFilter {
  const filter = filterFromProto(message);
  validateFilter(filter);
  if (filter.container !== undefined && !CONTAINER_PREFIX.test(filter.container)) {
    throw new RangeError('container must be a container ID prefix: 1 to 64 lowercase hex digits');
  }
  if (filter.comm !== undefined && Buffer.byteLength(filter.comm) > MAX_COMM_BYTES) {
    throw new RangeError(`comm is at most ${MAX_COMM_BYTES} bytes (the kernel's limit)`);
  }
  if (filter.match !== undefined && Buffer.byteLength(filter.match) > MAX_MATCH_BYTES) {
    throw new RangeError(`match is at most ${MAX_MATCH_BYTES} bytes`);
  }
  for (const key of ['pod', 'namespace', 'image'] as const) {
    const value = filter[key];
    if (value !== undefined && Buffer.byteLength(value) > MAX_CONTAINER_FIELD_BYTES) {
      throw new RangeError(`${key} is at most ${MAX_CONTAINER_FIELD_BYTES} bytes`);
    }
  }
  if (filter.types && new Set(filter.types).size !== filter.types.length) throw new RangeError('types lists a type twice');
  return filter;
}

/** The listeners, or an Error saying why the API cannot start as configured (checked before the sensor loads). */
export function checkApiOptions(options: Pick<ApiOptions, 'listen' | 'tls'>): Listener[] {
  const listeners = options.listen.map(parseListenAddress);
  for (const l of listeners) {
    if (l.kind === 'tcp' && !options.tls) {
      throw new Error(
        `api.listen ${l.text}: a TCP listener needs mutual TLS (api.tls: ca, cert, key): ` +
          'without it anyone who reaches the port could read every event of this node',
      );
    }
  }
  return listeners;
}

export async function startApiServer(parts: ApiParts, options: ApiOptions, log: ApiLog, observe: ObserveRequest = () => {}): Promise<ApiServer> {
  const listeners = checkApiOptions(options);
  const token = options.tokenFile ? readToken(options.tokenFile) : undefined;
  const tlsProvider = options.tls
    ? new grpc.experimental.FileWatcherCertificateProvider({
        caCertificateFile: options.tls.ca,
        certificateFile: options.tls.cert,
        privateKeyFile: options.tls.key,
        refreshIntervalMs: options.tls.refreshInterval,
      })
    : undefined;
  if (options.tls) for (const f of [options.tls.ca, options.tls.cert, options.tls.key]) readableFile(f);
  const started = Date.now();
  const health = new HealthImplementation({ '': 'SERVING', [SERVICE_NAME]: 'SERVING' });
  const streamsPerClient = new Map<string, number>();
  let active = 0;
  let nextId = 1;

  const server = new grpc.Server({
    'grpc.max_receive_message_length': options.maxRequestBytes,
    // HTTP/2 streams one connection may open at once; the per-client cap below counts across connections
    'grpc.max_concurrent_streams': Math.max(options.maxStreamsPerClient * 2, 8),
    'grpc.keepalive_time_ms': 60_000,
    'grpc.keepalive_timeout_ms': 20_000,
  });

  /** A client's identity for the stream cap: every local (unix socket) caller is one client; TCP callers by address. */
  const clientOf = (call: { getPeer(): string; getAuthContext(): AuthContext }): string => {
    const peer = call.getPeer();
    if (call.getAuthContext().transportSecurityType !== 'ssl') return 'local';
    const m = /^(?:ipv[46]:)?\[?([^\]]*?)\]?:\d+$/.exec(peer);
    return m ? m[1] : peer;
  };

  /** Takes one of the client's stream slots, or refuses with RESOURCE_EXHAUSTED; returns the release. */
  const admit = (call: { getPeer(): string; getAuthContext(): AuthContext }): (() => void) | string => {
    const client = clientOf(call);
    const open = streamsPerClient.get(client) ?? 0;
    if (open >= options.maxStreamsPerClient) {
      return `client ${client} already has ${open} open streams (api.maxStreamsPerClient is ${options.maxStreamsPerClient})`;
    }
    streamsPerClient.set(client, open + 1);
    active++;
    let released = false;
    return () => {
      if (released) return;
      released = true;
      active--;
      const n = (streamsPerClient.get(client) ?? 1) - 1;
      if (n === 0) streamsPerClient.delete(client);
      else streamsPerClient.set(client, n);
    };
  };

  /** Reports a call's end once, for the metrics. */
  const ender = (method: string) => {
    const t0 = process.hrtime.bigint();
    let ended = false;
    return (code: grpc.status) => {
      if (ended) return;
      ended = true;
      observe(method, grpc.status[code] ?? String(code), Number(process.hrtime.bigint() - t0) / 1e9);
    };
  };

  const fail = (call: grpc.ServerWritableStream<unknown, unknown>, code: grpc.status, details: string, end: (code: grpc.status) => void) => {
    end(code);
    call.emit('error', { code, details });
  };

  /** TCP callers (already through mutual TLS) must also send the bearer token when one is configured; unix socket callers passed its 0600 mode. */
  const unauthorized = (call: { getAuthContext(): AuthContext; metadata: grpc.Metadata }): string | undefined => {
    // TLS is on TCP listeners only: a call without it came through the unix socket
    if (!token || call.getAuthContext().transportSecurityType !== 'ssl') return undefined;
    const sent = call.metadata.get('authorization')[0];
    const want = Buffer.from(`Bearer ${token}`);
    const got = Buffer.from(typeof sent === 'string' ? sent : '');
    return got.length === want.length && timingSafeEqual(got, want) ? undefined : 'a valid bearer token is required (authorization: Bearer ...)';
  };

  /**
   * What every stream call passes before it streams: the token, a request that
   * decoded, a filter that holds, the client's stream cap. Undefined when the
   * call was already answered with the error.
   */
  const openStream = <Req extends { filter?: Parameters<typeof requestFilter>[0] }>(
    call: grpc.ServerWritableStream<Decoded<Req>, unknown>,
    method: string,
  ): { end: (code: grpc.status) => void; req: Req; filter: EventFilter; release: () => void } | undefined => {
    const end = ender(method);
    const req = call.request;
    const denied = unauthorized(call);
    if (denied) return void fail(call, grpc.status.UNAUTHENTICATED, denied, end);
    if (isInvalid(req)) return void fail(call, grpc.status.INVALID_ARGUMENT, req.invalid, end);
    let filter: EventFilter;
    try {
      filter = requestFilter(req.filter);
    } catch (err) {
      return void fail(call, grpc.status.INVALID_ARGUMENT, (err as Error).message, end);
    }
    const release = admit(call);
    if (typeof release === 'string') return void fail(call, grpc.status.RESOURCE_EXHAUSTED, release, end);
    return { end, req, filter, release };
  };

  const trace = async (call: grpc.ServerWritableStream<Decoded<TraceRequest>, TraceResponse>) => {
    const opened = openStream(call, 'Trace');
    if (!opened) return;
    const { end, req, filter, release } = opened;
    const maxQueued = req.maxQueued > 0 ? Math.min(req.maxQueued, options.traceQueue) : options.traceQueue;
    const name = `api:trace#${nextId++}`;
    const stream = parts.pipeline.stream(name, { filter, maxQueued });
    const stop = () => stream.close();
    call.on('cancelled', stop);
    call.on('close', stop);
    call.on('error', stop);
    let dropped = 0;
    try {
      for await (const item of stream) {
        if (call.cancelled) break;
        if ('dropped' in item) {
          dropped += item.dropped;
          await write(call, { events: [], dropped: item.dropped });
          continue;
        }
        for (let i = 0; i < item.events.length && !call.cancelled; i += EVENTS_PER_MESSAGE) {
          await write(call, { events: item.events.slice(i, i + EVENTS_PER_MESSAGE).map(joinedProto), dropped: 0 });
        }
      }
    } catch (err) {
      // the client went away under a write, or an event did not map: this stream ends, the agent goes on
      log('warn', { event: 'api-trace-failed', subscriber: name, error: (err as Error).message }, 'a Trace stream failed');
      if (!call.cancelled) return fail(call, grpc.status.INTERNAL, `the stream failed: ${(err as Error).message}`, end);
    } finally {
      stream.close();
      release();
    }
    if (!call.cancelled) {
      const trailer = new grpc.Metadata();
      trailer.set(DROPPED_TRAILER, String(dropped));
      call.end(trailer);
      end(grpc.status.OK);
    } else end(grpc.status.CANCELLED);
  };

  /** An event's message with its container's fields, joined here (never stored per event). */
  const joinedProto = (ev: AmberEvent) =>
    toProto(ev, ev.containerId === '' ? undefined : parts.pipeline.containers?.(ev.containerId));

  const query = async (call: grpc.ServerWritableStream<Decoded<QueryRequest>, QueryResponse>) => {
    const opened = openStream(call, 'Query');
    if (!opened) return;
    const { end, req, filter, release } = opened;
    const deadline = Date.now() + options.queryTimeout;
    let left = req.limit > 0 ? req.limit : Infinity;
    // the buffer stores container IDs only: pod, namespace and image are matched after the join
    const { stored, joined } = splitContainerFilter(filter);
    const joinedMatches = joined && compileFilter(joined, (id) => parts.pipeline.containers?.(id));
    const batches = parts.buffer.queryBatches(stored);
    try {
      for await (const all of batches) {
        const batch = joinedMatches ? all.filter(joinedMatches) : all;
        if (call.cancelled) break;
        if (Date.now() > deadline) {
          return fail(call, grpc.status.DEADLINE_EXCEEDED, `the query ran longer than api.queryTimeout (${options.queryTimeout} ms)`, end);
        }
        const events: AmberEvent[] = batch.length > left ? batch.slice(0, left) : batch;
        left -= events.length;
        for (let i = 0; i < events.length && !call.cancelled; i += EVENTS_PER_MESSAGE) {
          await write(call, { events: events.slice(i, i + EVENTS_PER_MESSAGE).map(joinedProto) });
        }
        if (left === 0) break;
      }
    } catch (err) {
      log('warn', { event: 'api-query-failed', error: (err as Error).message }, 'a Query failed');
      return fail(call, grpc.status.INTERNAL, `the query failed: ${(err as Error).message}`, end);
    } finally {
      await batches.return(undefined);
      release();
    }
    if (!call.cancelled) {
      call.end();
      end(grpc.status.OK);
    } else end(grpc.status.CANCELLED);
  };

  const status = (call: grpc.ServerUnaryCall<Decoded<StatusRequest>, StatusResponse>, callback: grpc.sendUnaryData<StatusResponse>) => {
    const end = ender('Status');
    const denied = unauthorized(call);
    if (denied) {
      end(grpc.status.UNAUTHENTICATED);
      return callback({ code: grpc.status.UNAUTHENTICATED, details: denied });
    }
    if (isInvalid(call.request)) {
      end(grpc.status.INVALID_ARGUMENT);
      return callback({ code: grpc.status.INVALID_ARGUMENT, details: call.request.invalid });
    }
    callback(null, statusOf(parts, options.nodeName, started, serving, active));
    end(grpc.status.OK);
  };

  /** Who asked, for an incident's manifest: the TLS client certificate's CN (else its address) on TCP; "unix" on the socket (Node cannot read the peer's uid). */
  const requesterOf = (call: { getPeer(): string; getAuthContext(): AuthContext }): string => {
    const auth = call.getAuthContext();
    if (auth.transportSecurityType !== 'ssl') return 'unix';
    const cn = auth.sslPeerCertificate?.subject?.CN;
    const name = Array.isArray(cn) ? cn.join(',') : cn;
    return (name || clientOf(call)).slice(0, MAX_REQUESTER_CHARS);
  };

  /**
   * A unary incident call: the token, a request that decoded, `check` (a
   * RangeError is INVALID_ARGUMENT), the agent's Incidents there; what `run`
   * rejects with is answered with its IncidentError's status.
   */
  const incidentCall =
    <Req, Checked, Res>(method: string, check: (req: Req, call: grpc.ServerUnaryCall<Decoded<Req>, Res>) => Checked, run: (incidents: Incidents, checked: Checked) => Promise<Res>) =>
    (call: grpc.ServerUnaryCall<Decoded<Req>, Res>, callback: grpc.sendUnaryData<Res>) => {
      const end = ender(method);
      const answer = (code: grpc.status, details: string) => {
        end(code);
        callback({ code, details });
      };
      const denied = unauthorized(call);
      if (denied) return answer(grpc.status.UNAUTHENTICATED, denied);
      const req = call.request;
      if (isInvalid(req)) return answer(grpc.status.INVALID_ARGUMENT, req.invalid);
      if (!parts.incidents) return answer(grpc.status.UNAVAILABLE, INCIDENTS_OFF);
      let checked: Checked;
      try {
        checked = check(req, call);
      } catch (err) {
        return answer(grpc.status.INVALID_ARGUMENT, (err as Error).message);
      }
      run(parts.incidents, checked).then(
        (res) => {
          callback(null, res);
          end(grpc.status.OK);
        },
        (err: unknown) => {
          const s = incidentErrorStatus(err);
          if (s.code === grpc.status.INTERNAL) log('warn', { event: 'api-incident-failed', method, error: s.details }, 'an incident call failed');
          answer(s.code, s.details);
        },
      );
    };

  const triggerIncident = incidentCall(
    'TriggerIncident',
    (req: TriggerIncidentRequest, call) => triggerRequestFromProto(req, requesterOf(call)),
    async (incidents, request): Promise<TriggerIncidentResponse> => {
      const r = await incidents.trigger(request);
      log('info', { event: 'api-incident-triggered', id: r.id, joined: r.joined, requestedBy: request.requestedBy }, 'an incident was triggered through the API');
      return { id: r.id, joined: r.joined, state: r.state };
    },
  );

  const listIncidents = incidentCall(
    'ListIncidents',
    (_req: ListIncidentsRequest) => undefined,
    async (incidents): Promise<ListIncidentsResponse> => ({ incidents: (await incidents.list()).map(incidentToProto) }),
  );

  const getIncident = incidentCall(
    'GetIncident',
    (req: GetIncidentRequest) => checkIncidentId(req.id),
    async (incidents, id): Promise<GetIncidentResponse> => {
      const shown = await incidents.show(id);
      if (!shown) throw notFound(id);
      return { incident: incidentToProto(shown.summary), manifest: shown.manifest ?? Buffer.alloc(0), signature: shown.signature ?? Buffer.alloc(0) };
    },
  );

  const releaseIncident = incidentCall(
    'ReleaseIncident',
    (req: ReleaseIncidentRequest) => checkIncidentId(req.id),
    async (incidents, id): Promise<ReleaseIncidentResponse> => {
      const responses = await incidents.release(id);
      log('info', { event: 'api-incident-released', id, responses: responses.map((r) => `${r.kind}: ${r.state}`) }, 'an incident was released through the API');
      return { responses: responses.map(responseToProto) };
    },
  );

  /** The archive: size and sha256 first, then its bytes a chunk at a time, as the client takes them; one of the client's streams. */
  const pullIncident = async (call: grpc.ServerWritableStream<Decoded<PullIncidentRequest>, PullIncidentResponse>) => {
    const end = ender('PullIncident');
    const denied = unauthorized(call);
    if (denied) return fail(call, grpc.status.UNAUTHENTICATED, denied, end);
    const req = call.request;
    if (isInvalid(req)) return fail(call, grpc.status.INVALID_ARGUMENT, req.invalid, end);
    const incidents = parts.incidents;
    if (!incidents) return fail(call, grpc.status.UNAVAILABLE, INCIDENTS_OFF, end);
    let id: string;
    try {
      id = checkIncidentId(req.id);
    } catch (err) {
      return fail(call, grpc.status.INVALID_ARGUMENT, (err as Error).message, end);
    }
    const release = admit(call);
    if (typeof release === 'string') return fail(call, grpc.status.RESOURCE_EXHAUSTED, release, end);
    let fh: Awaited<ReturnType<typeof openRegular>> | undefined;
    try {
      const archive = await incidents.archive(id);
      if (!archive) {
        const shown = await incidents.show(id);
        if (!shown) return fail(call, grpc.status.NOT_FOUND, notFound(id).message, end);
        const s = shown.summary;
        const why = s.state === 'failed' ? `its capture failed${s.error ? `: ${s.error}` : ''}` : `it is ${s.state}: no archive yet`;
        return fail(call, grpc.status.FAILED_PRECONDITION, `incident ${id} has no archive to pull: ${why}`, end);
      }
      // the archive is the agent's own file, yet opened as any: never through a link, and only a regular file
      fh = await openRegular(archive.path);
      const size = (await fh.stat()).size;
      if (size !== archive.size) return fail(call, grpc.status.INTERNAL, `incident ${id}: the archive is ${size} bytes, not the ${archive.size} recorded`, end);
      await write(call, { size, sha256: archive.sha256, data: Buffer.alloc(0) });
      for (let at = 0; at < size && !call.cancelled; ) {
        const chunk = Buffer.allocUnsafe(Math.min(PULL_CHUNK_BYTES, size - at));
        const { bytesRead } = await fh.read(chunk, 0, chunk.length, at);
        if (bytesRead === 0) return fail(call, grpc.status.INTERNAL, `incident ${id}: the archive ended at ${at} of ${size} bytes`, end);
        at += bytesRead;
        await write(call, { size: 0, sha256: '', data: chunk.subarray(0, bytesRead) });
      }
    } catch (err) {
      const s = incidentErrorStatus(err);
      if (s.code === grpc.status.INTERNAL) log('warn', { event: 'api-incident-failed', method: 'PullIncident', id, error: s.details }, 'an incident pull failed');
      if (!call.cancelled) return fail(call, s.code, s.details, end);
    } finally {
      await fh?.close();
      release();
    }
    if (!call.cancelled) {
      call.end();
      end(grpc.status.OK);
    } else end(grpc.status.CANCELLED);
  };

  let serving = true;
  server.addService(decodingSafely(AmberService), {
    trace,
    query,
    status,
    triggerIncident,
    listIncidents,
    getIncident,
    pullIncident,
    releaseIncident,
  } as unknown as grpc.UntypedServiceImplementation);
  health.addToServer(server);

  const addresses: string[] = [];
  try {
    for (const l of listeners) addresses.push(await bind(server, l, tlsProvider));
  } catch (err) {
    server.forceShutdown();
    throw err;
  }
  log('info', { event: 'api-listening', addresses }, 'amber API listening');

  let closing: Promise<void> | undefined;
  return {
    addresses,
    activeStreams: () => active,
    setServing(on) {
      serving = on;
      const s = on ? 'SERVING' : 'NOT_SERVING';
      health.setStatus('', s);
      health.setStatus(SERVICE_NAME, s);
    },
    close() {
      closing ??= new Promise<void>((resolve) => {
        // streams end on their own when the pipeline closes; what is left after a moment is cut
        const force = setTimeout(() => server.forceShutdown(), 2000);
        server.tryShutdown(() => {
          clearTimeout(force);
          for (const l of listeners) if (l.kind === 'unix') removeSocket(l.path);
          resolve();
        });
      });
      return closing;
    },
  };
}

/** Writes one message, waiting while the client's transport is full (that is when its pipeline queue fills). */
function write<T>(call: grpc.ServerWritableStream<unknown, T>, message: T): Promise<void> {
  if (call.write(message)) return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      call.off('drain', done);
      call.off('cancelled', done);
      call.off('close', done);
      resolve();
    };
    call.on('drain', done);
    call.on('cancelled', done);
    call.on('close', done);
  });
}

/**
 * The service with request decoders that never throw: grpc-js answers a
 * decoder's exception with INTERNAL, but bytes that are not the message are
 * the caller's error, so the handler answers INVALID_ARGUMENT.
 */
function decodingSafely(service: typeof AmberService): grpc.ServiceDefinition {
  const safe: Record<string, grpc.MethodDefinition<unknown, unknown>> = {};
  for (const [name, method] of Object.entries(service)) {
    const m = method as unknown as grpc.MethodDefinition<unknown, unknown>;
    safe[name] = {
      ...m,
      requestDeserialize: (bytes: Buffer) => {
        try {
          return m.requestDeserialize(bytes);
        } catch (err) {
          return { invalid: `the request is not a valid ${name} message: ${(err as Error).message}` };
        }
      },
    };
  }
  return safe as grpc.ServiceDefinition;
}

function statusOf(parts: ApiParts, node: string, started: number, serving: boolean, active: number): StatusResponse {
  const s = parts.sensor.stats();
  const b = parts.buffer.stats();
  return {
    node,
    version: AMBER_VERSION,
    uptimeSeconds: (Date.now() - started) / 1000,
    sensor: {
      state: serving ? 'running' : 'stopped',
      programs: parts.sensor.programs(),
      stalls: s.stalls,
      unknownKinds: s.unknownKinds,
      dnsPending: s.dnsPending,
    },
    types: SENSOR_EVENT_TYPES.map((type) => ({ type, events: s.received[type], drops: s.drops[type] })),
    subscribers: parts.pipeline.stats().subscribers.map((x) => ({ name: x.name, delivered: x.delivered, dropped: x.dropped, queued: x.queued })),
    buffer: {
      dataDir: b.dataDir,
      segments: b.segments,
      bytes: b.bytes,
      events: b.events,
      oldestTs: b.oldestTs ?? undefined,
      newestTs: b.newestTs ?? undefined,
      memoryEvents: b.memoryEvents,
      droppedEvents: b.droppedEvents,
      corruptBlocks: b.corruptBlocks,
      writeError: b.writeError ?? '',
      frozenWindows: b.frozen.windows.length,
      frozenBytes: b.frozen.bytes,
    },
    activeStreams: active,
    signingPublicKey: signingKeyOf(parts),
  };
}

function signingKeyOf(parts: ApiParts): string {
  try {
    return parts.incidents?.publicKey() ?? '';
  } catch {
    return ''; // no key yet: status still answers
  }
}

const notFound = (id: string) => new IncidentError('not-found', `no incident ${id}`);

// ---- listeners ----

async function bind(server: grpc.Server, l: Listener, tls: grpc.experimental.CertificateProvider | undefined): Promise<string> {
  if (l.kind === 'tcp') {
    if (!tls) throw new Error(`${l.text}: TCP needs TLS`);
    // requireClientCertificate: only clients with a certificate of the CA get in
    const creds = grpc.experimental.createCertificateProviderServerCredentials(tls, tls, true);
    const port = await new Promise<number>((resolve, reject) => {
      server.bindAsync(`${l.host}:${l.port}`, creds, (err, p) => (err ? reject(new Error(`cannot listen on ${l.text}: ${err.message}`)) : resolve(p)));
    });
    return `tcp://${l.host}:${port}`;
  }
  await prepareSocketPath(l.path);
  await new Promise<void>((resolve, reject) => {
    server.bindAsync(`unix://${l.path}`, grpc.ServerCredentials.createInsecure(), (err) => (err ? reject(new Error(`cannot listen on ${l.text}: ${err.message}`)) : resolve()));
  });
  // the directory (0700) already keeps others out; the socket's own mode says it again
  fs.chmodSync(l.path, 0o600);
  return l.text;
}

function readableFile(file: string): void {
  try {
    fs.accessSync(file, fs.constants.R_OK);
  } catch (err) {
    throw new Error(`api.tls: cannot read ${file}: ${(err as Error).message}`);
  }
}

function readToken(file: string): string {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8').trim();
  } catch (err) {
    throw new Error(`api.tokenFile: cannot read ${file}: ${(err as Error).message}`);
  }
  if (text.length < 16) throw new Error(`api.tokenFile ${file}: the token is shorter than 16 characters`);
  return text;
}

/**
 * The socket's directory is created 0700 (or must be a real directory, not a
 * symlink, and is then set to 0700); a stale socket left by a dead agent is
 * removed, a live one or anything that is not a socket is refused.
 */
async function prepareSocketPath(socket: string): Promise<void> {
  const dir = path.dirname(socket);
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  const d = fs.lstatSync(dir);
  if (!d.isDirectory()) throw new Error(`cannot listen on ${socket}: ${dir} is not a directory (a symlink?)`);
  if (d.uid !== process.getuid?.()) throw new Error(`cannot listen on ${socket}: ${dir} belongs to uid ${d.uid}, not to this agent`);
  // a shared directory (/tmp) is not the agent's to lock down: the socket needs one of its own
  if ((d.mode & 0o1022) !== 0) {
    throw new Error(`cannot listen on ${socket}: ${dir} is writable by others or sticky (mode ${(d.mode & 0o7777).toString(8)}); give the socket a directory of its own`);
  }
  fs.chmodSync(dir, 0o700);
  let st: fs.Stats;
  try {
    st = fs.lstatSync(socket);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw err;
  }
  if (!st.isSocket()) throw new Error(`cannot listen on ${socket}: something that is not a socket is there; not removing it`);
  if (await answers(socket)) throw new Error(`cannot listen on ${socket}: another process (an agent?) is listening there`);
  fs.unlinkSync(socket);
}

function answers(socket: string): Promise<boolean> {
  return new Promise((resolve) => {
    const c = net.connect(socket);
    c.once('connect', () => {
      c.destroy();
      resolve(true);
    });
    c.once('error', () => resolve(false));
  });
}

function removeSocket(socket: string): void {
  try {
    if (fs.lstatSync(socket).isSocket()) fs.unlinkSync(socket);
  } catch {
    // already gone
  }
}
