// A TCP peer on loopback for the network-cut tests, run in a container's
// network namespace by nsenter (so it is outside the container's cgroup).
//   tcp-peer.cjs listen PORT            prints "ready", then "connection" per peer; answers "pong\n"
//   tcp-peer.cjs connect PORT TIMEOUT   prints "data:<what it read>", "timeout" or "error:<code>", exits
'use strict';
const net = require('node:net');

const [mode, portText, timeoutText] = process.argv.slice(2);
const port = Number(portText);

if (mode === 'listen') {
  const server = net.createServer((socket) => {
    process.stdout.write('connection\n');
    socket.on('error', () => {});
    socket.end('pong\n');
  });
  server.listen(port, '127.0.0.1', () => process.stdout.write('ready\n'));
  process.on('SIGTERM', () => server.close(() => process.exit(0)));
} else if (mode === 'connect') {
  let data = '';
  const socket = net.connect({ host: '127.0.0.1', port });
  socket.setTimeout(Number(timeoutText));
  socket.on('data', (d) => (data += d.toString()));
  socket.on('end', () => {
    process.stdout.write(`data:${data.trim()}\n`);
    process.exit(0);
  });
  socket.on('timeout', () => {
    process.stdout.write(data ? `data:${data.trim()}\n` : 'timeout\n');
    process.exit(0);
  });
  socket.on('error', (err) => {
    process.stdout.write(`error:${err.code}\n`);
    process.exit(0);
  });
} else {
  process.stderr.write('usage: tcp-peer.cjs listen PORT | connect PORT TIMEOUT_MS\n');
  process.exit(2);
}
