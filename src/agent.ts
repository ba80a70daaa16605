/**
 * The node agent: the sensor publishes its events, named by container, into
 * the pipeline; the rolling buffer records every one of them, and the other
 * consumers (detector, API streams, metrics) subscribe there. The one place
 * that wires the parts together; it reads no environment, argv or signals
 * (the CLI does).
 */
import type { Logger } from 'pino';
import { type Metrics, startMetrics } from './api/metrics';
import { type ApiServer, checkApiOptions, startApiServer } from './api/server';
import { EventBuffer, type BufferLog } from './buffer';
import type { AmberConfig } from './config';
import { ContainerMetadataStore } from './containers/metadata';
import { fieldsLookup, MetadataDir } from './containers/metadata-dir';
import { type DetectorHandle, startDetector } from './detect/detector';
import { loadRules } from './detect/rules';
import type { IncidentManager } from './incident/manager';
import { startIncidents } from './incident/setup';
import { Pipeline } from './pipeline/pipeline';
import { preflight } from './sensor/preflight';
import { countTotal, Sensor, type SensorStats } from './sensor/sensor';

export interface Agent {
  readonly buffer: EventBuffer;
  readonly sensor: Sensor;
  /** Every event the sensor delivers; subscribe here, never to the sensor. */
  readonly pipeline: Pipeline;
  /** The gRPC API on config.api.listen. */
  readonly api: ApiServer;
  /** The Prometheus endpoint, when config.metrics.listen is set. */
  readonly metrics: Metrics | undefined;
  /** Runtime and pod facts of every container seen, learned off the hot path, also written to <dataDir>/containers/. */
  readonly containers: ContainerMetadataStore;
  /** Drift and the rules: a pipeline subscriber publishing its findings back into the pipeline (undefined when detect.enabled is off). */
  readonly detector: DetectorHandle | undefined;
  /** Incident capture into signed bundles (undefined when incident.enabled is off). */
  readonly incidents: IncidentManager | undefined;
  /** Stops the sensor, writes what it delivered, closes the buffer. Idempotent. */
  close(): Promise<void>;
}

export async function startAgent(config: AmberConfig, log: Logger): Promise<Agent> {
  checkApiOptions(config.api); // a listener that cannot be: refused before anything starts
  // invalid rules fail the start, naming the file, rule and field, before anything starts
  const rules = config.detect.enabled ? loadRules(config.detect.rules, { lists: config.detect.lists }) : undefined;
  const bufferLog: BufferLog = (level, msg, fields) => log[level]({ event: 'buffer', ...fields }, msg);
  const buffer = await EventBuffer.open({
    dataDir: config.dataDir,
    maxBytes: config.buffer.maxBytes,
    maxAgeMs: config.buffer.maxAge,
    flushIntervalMs: config.buffer.flushInterval,
    maxMemoryBytes: config.buffer.maxMemoryBytes,
    maxFrozenWindows: config.buffer.maxFrozenWindows,
    maxFrozenBytes: config.buffer.maxFrozenBytes,
    log: bufferLog,
  });
  const pipeline = new Pipeline((obj, msg) => log.warn(obj, msg));
  pipeline.addSink((events) => buffer.append(events));
  let sensor: Sensor;
  let containers: ContainerMetadataStore | undefined;
  let detector: DetectorHandle | undefined;
  let incidents: IncidentManager | undefined;
  try {
    // what the sensor needs, checked (and named) first; its cgroup v2 root is shared with the metadata store
    const { cgroupRoot } = preflight({ needCgroupSkb: config.sensor.types.includes('dns') });
    containers = new ContainerMetadataStore({
      cgroupRoot,
      dir: await MetadataDir.open(config.dataDir, { create: true }),
      log: (obj, msg) => log.warn({ event: 'container-metadata', ...obj }, msg),
    });
    const store = containers;
    pipeline.containers = fieldsLookup((id) => store.get(id));
    // subscribed before the sensor starts, so its process table sees every exec
    detector = rules
      ? startDetector({
          pipeline,
          metadata: containers,
          rules,
          writableMounts: config.detect.writableMounts,
          maxAlertsPerRulePerSecond: config.detect.maxAlertsPerRulePerSecond,
          hash: { maxBytes: config.detect.hashMaxBytes },
          log: (obj, msg) => log.warn({ event: 'detector', ...obj }, msg),
        })
      : undefined;
    // before the sensor: what a previous run left frozen is thawed first
    if (config.incident.enabled) {
      incidents = await startIncidents(config.incident, { dataDir: config.dataDir, node: config.nodeName, cgroupRoot, buffer, containers, rules, detector, log });
    }
    sensor = await Sensor.start(
      {
        cgroupRoot,
        containers,
        types: config.sensor.types,
        ringBytes: config.sensor.ringBytes,
        pollMs: config.sensor.pollInterval,
        dnsTimeoutMs: config.sensor.dnsTimeout,
        ignoreSelf: true,
        log: (obj, msg) => log.warn({ event: 'containers', ...obj }, msg),
      },
      pipeline.publish,
    );
  } catch (err) {
    await incidents?.close();
    detector?.close();
    containers?.close();
    await buffer.close();
    throw err;
  }
  let api: ApiServer | undefined;
  let metrics: Metrics | undefined;
  try {
    const parts = { pipeline, buffer, sensor, incidents };
    if (config.metrics.listen) metrics = await startMetrics(config.metrics.listen, parts, () => api?.activeStreams() ?? 0);
    api = await startApiServer(parts, { ...config.api, nodeName: config.nodeName }, (level, obj, msg) => log[level](obj, msg), metrics?.observeRequest);
  } catch (err) {
    await metrics?.close();
    await sensor.stop();
    await incidents?.close();
    detector?.close();
    pipeline.close();
    containers.close();
    await buffer.close();
    throw err;
  }
  log.info({ event: 'started', node: config.nodeName, api: api.addresses, metrics: metrics?.address, dataDir: config.dataDir, types: config.sensor.types, programs: sensor.programs(), rules: rules?.file }, 'amber agent recording');

  let lastDrops = 0;
  const logStats = (final = false) => {
    const s: SensorStats = sensor.stats();
    const b = buffer.stats();
    const drops = countTotal(s.drops);
    const fields = {
      event: final ? 'final-stats' : 'stats',
      received: countTotal(s.received),
      drops: s.drops,
      stalls: s.stalls,
      subscribers: pipeline.stats().subscribers,
      detector: detector?.stats(),
      incidents: incidents?.stats(),
      buffer: { segments: b.segments, bytes: b.bytes, events: b.events, memoryEvents: b.memoryEvents, droppedEvents: b.droppedEvents, writeError: b.writeError },
    };
    if (drops > lastDrops) log.warn(fields, 'the ring buffer was full: events were dropped (counted per type)');
    else log.info(fields, 'counters');
    lastDrops = drops;
  };
  const statsTimer = setInterval(logStats, config.statsInterval);
  statsTimer.unref();

  let closing: Promise<void> | undefined;
  return {
    buffer,
    sensor,
    pipeline,
    api,
    metrics,
    containers,
    detector,
    incidents,
    close: () => {
      closing ??= (async () => {
        clearInterval(statsTimer);
        api.setServing(false);
        await sensor.stop();
        await detector?.settled(); // the findings under way reach the buffer
        detector?.close();
        // the captures under way finish (their windows end at most incident.window.after later); freezes are thawed
        await incidents?.close();
        pipeline.close(); // ends the Trace streams, with their trailers
        await api.close();
        await metrics?.close();
        await containers.flush(); // the last containers' files reach the data dir
        containers.close();
        logStats(true);
        await buffer.close();
        log.info({ event: 'stopped' }, 'amber agent stopped');
      })();
      return closing;
    },
  };
}
