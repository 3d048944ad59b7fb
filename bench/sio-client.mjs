// Socket.IO clients for the stream peer: opens --count sockets (websocket transport), socket i
// joining room r<first+i>, and counts the messages they receive. Prints {"ready":n} once all are
// connected, then {"received":N} and exits when a line arrives on stdin (or after --timeout s).
// With --storm 1 (the `storm` peer) every socket is opened at once, as clients reconnecting after
// a restart, and it prints {"storm":{"connected":n,"ms":[…]}}: each socket's time from the start
// to its `connect` event, once every socket connected or failed.
import { io } from "socket.io-client";
import { createInterface } from "node:readline";

const args = Object.fromEntries(
  process.argv.slice(2).reduce((acc, v, i, a) => (i % 2 === 0 ? [...acc, [v.replace(/^--/, ""), a[i + 1]]] : acc), []),
);
const url = args.url ?? "http://127.0.0.1:3000";
const count = Number(args.count ?? 100);
const first = Number(args.first ?? 0);
const timeoutMs = Number(args.timeout ?? 300) * 1000;
const storm = args.storm === "1";
const began = performance.now();
const stormMs = [];
let settled = 0;
const settle = () => {
  settled += 1;
  if (storm && settled === count) print({ storm: { connected: stormMs.length, ms: stormMs } });
};
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
    if (storm) {
      stormMs.push(performance.now() - began);
      settle();
    }
    if (connected === count) print({ ready: connected });
  });
  s.on("connect_error", () => storm && settle());
  sockets.push(s);
  // Pace the handshakes a little so the listen backlog never overflows (not in a storm).
  if (!storm && i % 200 === 199) await new Promise((r) => setTimeout(r, 50));
}
