// Socket.IO clients for the stream peer: opens --count sockets (websocket transport), socket i
// joining room r<first+i>, and counts the messages they receive. Prints {"ready":n} once all are
// connected, then {"received":N} and exits when a line arrives on stdin (or after --timeout s).
import { io } from "socket.io-client";
import { createInterface } from "node:readline";

const args = Object.fromEntries(
  process.argv.slice(2).reduce((acc, v, i, a) => (i % 2 === 0 ? [...acc, [v.replace(/^--/, ""), a[i + 1]]] : acc), []),
);
const url = args.url ?? "http://127.0.0.1:3000";
const count = Number(args.count ?? 100);
const first = Number(args.first ?? 0);
const timeoutMs = Number(args.timeout ?? 300) * 1000;
const print = (o) => process.stdout.write(JSON.stringify(o) + "\n");
let received = 0;
let connected = 0;
const sockets = [];
const finish = () => {
  print({ received });
  for (const s of sockets) s.close();
  process.exit(0);
};
setTimeout(finish, timeoutMs).unref();
createInterface({ input: process.stdin }).on("line", finish);
for (let i = 0; i < count; i++) {
  const s = io(url, { transports: ["websocket"], query: { room: `r${first + i}` }, reconnection: false });
  s.on("event", () => {
    received += 1;
  });
  s.on("connect", () => {
    connected += 1;
    if (connected === count) print({ ready: connected });
  });
  sockets.push(s);
  // Pace the handshakes a little so the listen backlog never overflows.
  if (i % 200 === 199) await new Promise((r) => setTimeout(r, 50));
}
