// Run by test/e2e/sensor-self.test.ts, inside a PID namespace: starts the
// built sensor (ignoreSelf as argv[4] says), opens its own marker three times,
// says "ready", waits for the host's marker to be opened, then prints one JSON
// line of what it saw: its own pid, the opens of its marker and of the host's.
//   node self-ignore.cjs SELF_MARKER HOST_MARKER 1|0
const fs = require('node:fs');
const path = require('node:path');
const { Sensor } = require(path.resolve(__dirname, '../../dist/src/sensor/sensor.js'));

const [selfMarker, hostMarker, ignore] = process.argv.slice(2);

async function main() {
  const self = [];
  const host = [];
  const sensor = await Sensor.start({ types: ['open'], ignoreSelf: ignore === '1' }, (batch) => {
    for (const e of batch) {
      if (e.path === selfMarker) self.push(e.pid);
      if (e.path === hostMarker) host.push(e.pid);
    }
  });
  for (let i = 0; i < 3; i++) fs.closeSync(fs.openSync(selfMarker, 'r'));
  process.stdout.write('ready\n');
  const deadline = Date.now() + 10_000;
  while (host.length === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  // the reader drains every 10 ms: by now its own opens (made first) were drained too
  await new Promise((r) => setTimeout(r, 100));
  await sensor.stop();
  process.stdout.write(`${JSON.stringify({ pid: process.pid, self, host })}\n`);
}

main().catch((err) => {
  process.stderr.write(`${err.stack}\n`);
  process.exit(1);
});
