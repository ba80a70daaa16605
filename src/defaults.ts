/**
 * The one table of defaults and allowed ranges: the configuration schema
 * (src/config.ts), the sensor (src/sensor/sensor.ts), the buffer and the CLI's
 * usage texts all read them here, so they cannot disagree. Durations are in
 * ms, sizes in bytes.
 */

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;
const TiB = 1024 * GiB;
const SECOND = 1000;
const MINUTE = 60 * SECOND;
const HOUR = 60 * MINUTE;
const DAY = 24 * HOUR;

/** The longest delay a Node timer takes (2^31-1 ms, ~24.8 days); longer ones fire after 1 ms. */
export const MAX_TIMER_MS = 2 ** 31 - 1;

export const DEFAULTS = {
  dataDir: '/var/lib/amber',
  logLevel: 'info',
  /** How often the agent logs its counters. */
  statsIntervalMs: MINUTE,
  sensor: {
    /** The BPF ring buffer (power of two, page multiple). */
    ringBytes: 16 * MiB,
    /** Queued bytes that wake the reader before its timer does: a quarter of the ring. */
    wakeupFraction: 1 / 4,
    /** The reader drains the ring at least this often (its poll timeout). */
    pollMs: 10,
    /** One batch handed to JavaScript holds at most this many bytes of records. */
    batchBytes: 1 * MiB,
    /** Batches in the reader's pool. */
    batchCount: 16,
    /** A DNS query unanswered this long is reported as a response with rcode TIMEOUT. */
    dnsTimeoutMs: 5 * SECOND,
  },
  buffer: {
    maxBytes: 256 * MiB,
    maxAgeMs: DAY,
    flushIntervalMs: SECOND,
    /** Bytes of the block being encoded before it is closed and compressed. */
    blockBytes: 1 * MiB,
    maxMemoryBytes: 64 * MiB,
    maxFrozenWindows: 50,
    maxFrozenBytes: 512 * MiB,
  },
  api: {
    socket: '/run/amber/amber.sock',
    maxStreamsPerClient: 16,
    maxRequestBytes: 64 * KiB,
    traceQueue: 65_536,
    queryTimeoutMs: 5 * MINUTE,
    tlsRefreshMs: MINUTE,
  },
  detect: {
    /** The detector's pipeline queue (events). */
    maxQueued: 262_144,
    /** How long a finding waits for its container's metadata. */
    metadataWaitMs: 3 * SECOND,
    /** A process's mountinfo is re-read at most this often (writableMounts). */
    mountCacheMs: 10 * SECOND,
    /** `alert` findings per rule per second at most; more are counted, not published. */
    maxAlertsPerRulePerSecond: 100,
    /** Drifted files larger than this are not hashed ("larger than the hash cap"). */
    hashMaxBytes: 256 * MiB,
    /** Pinned files waiting to be hashed at most; more are not hashed ("hash queue full"). */
    hashMaxPending: 256,
  },
  incident: {
    /** The frozen window around the trigger. */
    beforeMs: 10 * MINUTE,
    afterMs: 10 * SECOND,
    /** Triggers for a container with an incident opened less than this ago join it. */
    joinWindowMs: 10 * MINUTE,
    maxConcurrent: 2,
    maxQueued: 16,
    maxPerHour: 60,
    memoryMaxBytes: 2 * GiB,
    upperLayerMaxFileBytes: 64 * MiB,
    upperLayerMaxTotalBytes: 1 * GiB,
    executableMaxBytes: 256 * MiB,
    /** Processes described (facts, executables, cores with allProcesses) per incident. */
    maxProcesses: 64,
    retentionMaxBytes: 10 * GiB,
    retentionMaxCount: 100,
    uploadInitialDelayMs: 5 * SECOND,
    uploadMaxDelayMs: 10 * MINUTE,
  },
} as const;

export interface Range {
  min: number;
  max: number;
  /** How the README and error messages show the range, e.g. "1ms to 1s". */
  text: string;
  /** Only whole numbers (ms handed to the native reader's int, counts). */
  integer?: boolean;
}

/**
 * What each option accepts. The bounds keep every value inside what the code
 * under it can take (a Node timer, the native reader's int poll timeout) and
 * away from values that break the agent (a 0 ms flush loop, a 30-day poll
 * that SIGTERM would wait for).
 */
export const RANGES = {
  statsInterval: { min: SECOND, max: DAY, text: '1s to 24h' },
  sensor: {
    ringBytes: { min: 64 * KiB, max: 1 * GiB, text: '64KiB to 1GiB, a power of two', integer: true },
    // the reader checks for a stop request once per poll: this bounds how long SIGTERM waits
    pollInterval: { min: 1, max: SECOND, text: '1ms to 1s, whole ms', integer: true },
    dnsTimeout: { min: 100, max: 10 * MINUTE, text: '100ms to 10m' },
  },
  buffer: {
    maxBytes: { min: 16 * MiB, max: 64 * TiB, text: '16MiB to 64TiB', integer: true },
    maxAge: { min: MINUTE, max: 366 * DAY, text: '1m to 366d' },
    flushInterval: { min: 10, max: 10 * MINUTE, text: '10ms to 10m' },
    maxMemoryBytes: { min: 4 * MiB, max: 64 * GiB, text: '4MiB to 64GiB', integer: true },
    maxFrozenWindows: { min: 1, max: 10_000, text: '1 to 10000', integer: true },
    maxFrozenBytes: { min: 1 * MiB, max: 64 * TiB, text: '1MiB to 64TiB', integer: true },
  },
  api: {
    maxStreamsPerClient: { min: 1, max: 1024, text: '1 to 1024', integer: true },
    maxRequestBytes: { min: 1 * KiB, max: 16 * MiB, text: '1KiB to 16MiB', integer: true },
    traceQueue: { min: 256, max: 16 * 1024 * 1024, text: '256 to 16777216', integer: true },
    queryTimeout: { min: SECOND, max: DAY, text: '1s to 24h' },
    tlsRefresh: { min: 100, max: DAY, text: '100ms to 24h' },
  },
  detect: {
    maxAlertsPerRulePerSecond: { min: 1, max: 1_000_000, text: '1 to 1000000', integer: true },
    hashMaxBytes: { min: 0, max: 64 * GiB, text: '0 to 64GiB', integer: true },
  },
  incident: {
    before: { min: 0, max: DAY, text: '0 to 24h' },
    after: { min: 0, max: HOUR, text: '0 to 1h' },
    joinWindow: { min: 0, max: DAY, text: '0 to 24h' },
    maxConcurrent: { min: 1, max: 64, text: '1 to 64', integer: true },
    maxQueued: { min: 0, max: 10_000, text: '0 to 10000', integer: true },
    maxPerHour: { min: 1, max: 100_000, text: '1 to 100000', integer: true },
    memoryMaxBytes: { min: 0, max: 1 * TiB, text: '0 to 1TiB', integer: true },
    fileBytes: { min: 0, max: 1 * TiB, text: '0 to 1TiB', integer: true },
    maxProcesses: { min: 1, max: 100_000, text: '1 to 100000', integer: true },
    retentionMaxCount: { min: 1, max: 100_000, text: '1 to 100000', integer: true },
    uploadDelay: { min: 100, max: DAY, text: '100ms to 24h' },
    uploadMaxAttempts: { min: 1, max: 1_000_000, text: '1 to 1000000', integer: true },
    partSize: { min: 5 * MiB, max: 5 * GiB, text: '5MiB to 5GiB', integer: true },
    timeout: { min: 100, max: HOUR, text: '100ms to 1h' },
  },
  /** `amber trace --timeout`: one timer. */
  traceTimeout: { min: 1, max: 24 * DAY, text: '1ms to 24d' },
} as const satisfies Record<string, Range | Record<string, Range>>;
