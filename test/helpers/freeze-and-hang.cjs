'use strict';
/**
 * Child process of test/e2e/memory.test.ts: freezes the cgroup of a process
 * the way a dump does, says so, and hangs until it is killed (kill -9 mid-dump).
 * Uses the compiled freezer (dist/). Usage: freeze-and-hang.cjs DATA_DIR PID
 */
const path = require('node:path');
const pino = require('pino');

const { CgroupFreezer } = require(path.join(__dirname, '../../dist/src/incident/freezer.js'));

const [dataDir, pid] = process.argv.slice(2);
const freezer = new CgroupFreezer({ dataDir, log: pino({ level: 'silent' }) });
freezer.freeze(Number(pid)).then(
  (frozen) => {
    process.stdout.write(`frozen ${frozen.path}\n`);
    setInterval(() => {}, 1 << 30);
  },
  (err) => {
    process.stderr.write(`${err.message}\n`);
    process.exit(1);
  },
);
