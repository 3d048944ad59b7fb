// Socket.IO 4 with @socket.io/redis-streams-adapter: the peer of `chatfleet bench stream`.
//
//   node sio-server.mjs gateway  --redis URL --port P
//       Holds client sockets; each joins the room named in its handshake query (`room`).
//       Prints {"ready":true} once listening.
//   node sio-server.mjs producer --redis URL --rooms R --rate M --seconds S
//       No clients: broadcasts M token messages per second to each of R rooms through the
//       adapter (as a chatfleet worker emits deltas), for S seconds, then prints
//       {"emitted":N} and exits.
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
  const rate = Number(args.rate ?? 33);
  const seconds = Number(args.seconds ?? 10);
  const start = performance.now();
  let emitted = 0;
  const seq = new Array(rooms).fill(0);
  // Every 10 ms, emit what is due so each room gets `rate` messages per second.
  const timer = setInterval(() => {
    const elapsed = (performance.now() - start) / 1000;
    if (elapsed >= seconds) {
      clearInterval(timer);
      print({ emitted });
      setTimeout(() => process.exit(0), 200);
      return;
    }
    const due = Math.floor(elapsed * rate);
    for (let r = 0; r < rooms; r++) {
      while (seq[r] < due) {
        seq[r] += 1;
        io.to(`r${r}`).emit("event", { seq: seq[r], type: "delta", turn_id: `t${r}`, text: "tokens " });
        emitted += 1;
      }
    }
  }, 10);
} else {
  print({ error: `unknown role ${role}` });
  process.exit(2);
}
