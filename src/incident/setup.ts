/**
 * The incident parts as the agent's configuration asks for them: the signing
 * key, the upload sinks and queue, the freezer, the responses, the manager.
 * The config keys are durations and sizes; the modules take ms and bytes.
 */
import type { Logger } from 'pino';
import { AMBER_VERSION } from '../api/version';
import type { EventBuffer } from '../buffer';
import type { AmberConfig } from '../config';
import type { ContainerMetadataStore } from '../containers/metadata';
import type { DetectorHandle } from '../detect/detector';
import type { RuleSet } from '../detect/rules';
import { CgroupFreezer } from './freezer';
import { IncidentManager } from './manager';
import { Responses } from './responses';
import { loadOrCreateSigningKey } from './signing';
import { createSinks, type SinkConfig } from './sinks';
import { UploadQueue } from './uploads';

type IncidentConfig = AmberConfig['incident'];
type SinkEntry = IncidentConfig['upload']['sinks'][number];

/** A config entry as the sink modules take it (timeouts in ms). */
export function sinkOptions(entry: SinkEntry): SinkConfig {
  if (entry.type === 's3') {
    const { requestTimeout, connectTimeout, ...rest } = entry;
    return { ...rest, requestTimeoutMs: requestTimeout, connectTimeoutMs: connectTimeout };
  }
  const { readyTimeout, keepaliveInterval, ...rest } = entry;
  return { ...rest, readyTimeoutMs: readyTimeout, keepaliveIntervalMs: keepaliveInterval };
}

export interface IncidentParts {
  dataDir: string;
  node: string;
  cgroupRoot: string;
  buffer: EventBuffer;
  containers: ContainerMetadataStore;
  rules: RuleSet | undefined;
  detector: DetectorHandle | undefined;
  log: Logger;
}

/** Everything incident capture needs, checked now: a bad key or sink fails the agent's start. */
export async function startIncidents(config: IncidentConfig, parts: IncidentParts): Promise<IncidentManager> {
  const log = parts.log;
  const key = await loadOrCreateSigningKey(parts.dataDir, config.signingKeyFile);
  if (key.generated) log.warn({ event: 'signing-key-generated', publicKey: key.publicKeyFile }, 'generated the bundle signing key (keep its public half to verify bundles)');
  const sinks = await createSinks(config.upload.sinks.map(sinkOptions));
  const { initialDelay, maxDelay, maxAttempts } = config.upload.retry;
  const uploads =
    sinks.length > 0 ? new UploadQueue({ dataDir: parts.dataDir, sinks, log: log.child({ event: 'upload' }), retry: { initialMs: initialDelay, maxMs: maxDelay, maxAttempts } }) : undefined;
  const manager = await IncidentManager.start({
    dataDir: parts.dataDir,
    node: parts.node,
    version: AMBER_VERSION,
    buffer: parts.buffer,
    containers: parts.containers,
    key,
    rules: parts.rules,
    uploads,
    responses: new Responses({ dataDir: parts.dataDir, bpffs: config.bpffs, cgroupRoot: parts.cgroupRoot }),
    freezer: new CgroupFreezer({ dataDir: parts.dataDir, log }),
    capture: {
      beforeMs: config.window.before,
      afterMs: config.window.after,
      memory: config.memory,
      upperLayer: config.upperLayer,
      executableMaxBytes: config.executableMaxBytes,
      redactEnv: config.redactEnv,
      maxProcesses: config.maxProcesses,
      cgroupRoot: parts.cgroupRoot,
    },
    limits: {
      joinWindowMs: config.joinWindow,
      maxConcurrent: config.maxConcurrent,
      maxQueued: config.maxQueued,
      maxPerHour: config.maxPerHour,
      retention: config.retention,
    },
    log,
  });
  if (parts.detector) manager.follow(parts.detector);
  return manager;
}
