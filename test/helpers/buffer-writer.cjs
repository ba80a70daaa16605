'use strict';
/**
 * Child process of the crash test (test/unit/crash.test.ts): opens the buffer
 * in a data dir (recovering it), resumes the sequence after what it finds, and
 * appends numbered events at full speed until it is killed.
 * Uses the compiled buffer (dist/, built by `npx tsc -p tsconfig.json`).
 */
const path = require('node:path');

const DIST_BUFFER = path.join(__dirname, '../../dist/src/buffer/index.js');
const BASE_TS = Date.UTC(2024, 4, 1, 12, 0, 0) * 1e6;
const CONTAINER = 'c0ffee'.padEnd(64, '7');

/** The event with sequence number `seq`, fields in the contract's order. */
function sequenceEvent(seq) {
  return {
    type: 'open',
    ts: BASE_TS + seq * 1000,
    pid: seq,
    tid: seq,
    ppid: 1,
    uid: 0,
    gid: 0,
    comm: 'writer',
    cgroupId: 4242,
    containerId: CONTAINER,
    mntns: 4026531840,
    netns: 4026531992,
    path: `/data/file-${seq % 997}`,
    flags: 0,
    flagNames: ['O_RDONLY'],
    mode: 0,
    ret: 3,
  };
}

const WRITER_OPTIONS = {
  flushIntervalMs: 20,
  blockBytes: 32 * 1024,
  segmentBytes: 256 * 1024,
  maxBytes: 1024 * 1024 * 1024,
  maxAgeMs: 100 * 365 * 86_400_000,
};

async function main(dataDir) {
  const { EventBuffer } = require(DIST_BUFFER);
  const buffer = await EventBuffer.open({ dataDir, ...WRITER_OPTIONS });
  let next = buffer.stats().events;
  process.stdout.write(`resumed at ${next}\n`);
  for (;;) {
    const batch = [];
    for (let i = 0; i < 1000; i++) batch.push(sequenceEvent(next++));
    buffer.append(batch);
    await new Promise((resolve) => setImmediate(resolve));
  }
}

module.exports = { DIST_BUFFER, WRITER_OPTIONS, sequenceEvent, BASE_TS };

if (require.main === module) {
  main(process.argv[2]).catch((err) => {
    process.stderr.write(`${err.stack}\n`);
    process.exit(1);
  });
}
