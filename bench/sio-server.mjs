// Socket.IO 4 with @socket.io/redis-streams-adapter: the peer of `chatfleet bench stream` and
// `chatfleet bench capacity`.
//
//   node sio-server.mjs gateway  --redis URL --port P
//       Holds client sockets; each joins the room named in its handshake query (`room`).
//       Prints {"ready":true} once listening.
//   node sio-server.mjs producer --redis URL --rooms R --rate M --seconds S [--first F --count C]
//       No clients: sends round(M × S) token messages to each of rooms r<F> … r<F+C-1> (default:
//       all R rooms) through the adapter, one message per token at M per second per room, as a
//       chatfleet worker's model emits tokens (Socket.IO has no coalescing). Room r's schedule
//       is offset by r/R of a token interval, so the load is spread evenly as independent
//       streams' would be, not sent in bursts. Once Redis has every message it prints
//       {"emitted":N,"per_room":K,"complete":bool,"cpu_us":C} and exits; `complete` is false
//       when it could not keep pace and stopped at its deadline (2 × S + 5 seconds) with
//       messages unsent; C is its CPU time from the first message on (not its start-up).
import { createServer } from "node:http";
import { createClient } from "redis";
import { Server } from "socket.io";
import { createAdapter } from "@socket.io/redis-streams-adapter";

const args = Object.fromEntries(
  process.argv.slice(3).reduce((acc, v, i, a) => (i % 2 === 0 ? [...acc, [v.replace(/^--/, ""), a[i + 1]]] : acc), []),
);
const role = process.argv[2];
const print = (o) => process.stdout.write(JSON.stringify(o) + "\n");
const redis = createClient({ url: args.redis ?? "redis://127.0.0.1:6379" });
await redis.connect();

if (role === "gateway") {
  const http = createServer();
  const io = new Server(http, { adapter: createAdapter(redis), transports: ["websocket"] });
  io.on("connection", (socket) => {
    const room = socket.handshake.query.room;
    if (typeof room === "string") socket.join(room);
  });
  http.listen(Number(args.port), "127.0.0.1", () => print({ ready: true }));
  process.on("SIGTERM", () => process.exit(0));
} else if (role === "producer") {
  const io = new Server({ adapter: createAdapter(redis) });
  const rooms = Number(args.rooms ?? 100);
  const first = Number(args.first ?? 0);
  const count = Number(args.count ?? rooms - first);
  const rate = Number(args.rate ?? 50);
  const seconds = Number(args.seconds ?? 10);
  const perRoom = Math.round(rate * seconds);
  const deadline = 2 * seconds + 5;
  const start = performance.now();
  const cpu0 = process.cpuUsage();
  let emitted = 0;
  const seq = new Array(count).fill(0);
  const end = async (complete) => {
    clearInterval(timer);
    // The adapter's XADDs go out on `redis` in order: once this PING is answered, Redis has
    // applied every message sent.
    await redis.ping();
    const cpu = process.cpuUsage(cpu0);
    print({ emitted, per_room: perRoom, complete, cpu_us: cpu.user + cpu.system });
    process.exit(0);
  };
  // Every 5 ms, send what is due: room r's token k (from 1) is due at (k − 1 + r/R) / M s.
  const timer = setInterval(() => {
    const tokens = ((performance.now() - start) / 1000) * rate;
    let done = true;
    for (let i = 0; i < count; i++) {
      const r = first + i;
      const due = Math.min(perRoom, Math.floor(tokens - r / rooms) + 1);
      while (seq[i] < due) {
        seq[i] += 1;
        io.to(`r${r}`).emit("event", { seq: seq[i], type: "delta", turn_id: `t${r}`, text: "tokens " });
        emitted += 1;
      }
      if (seq[i] < perRoom) done = false;
    }
    if (done) end(true);
    else if (tokens / rate >= deadline) end(false);
  }, 5);
} else {
  print({ error: `unknown role ${role}` });
  process.exit(2);
}
