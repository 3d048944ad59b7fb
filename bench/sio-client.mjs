// Socket.IO clients for the stream and capacity peers: opens --count sockets (websocket
// transport), socket i joining room r<first+i>. Prints {"ready":n,"failed":f} once every socket
// has connected (n) or failed to (f; its room then counts as short in the report).
//
// Each socket checks its room's `seq` (1, 2, 3 … from the producer) and times the gap between
// consecutive messages with the monotonic clock (`performance.now()`), into one histogram of
// (µs, count) pairs, µs rounded to 3 significant digits (the precision of the bench's own
// histograms, which merge these pairs exactly).
//
// A stdin line `report` prints the report at once; `report K W` first waits until every socket
// has K messages, or no message arrived for 1 s, or W ms passed. The report is
// {"received":N,"gaps":[[µs,n],…],"missing":m,"duplicates":d,"short_rooms":s,"min_room":a,
// "max_room":b,"cpu_us":c} (missing: seqs skipped or never reached K; short_rooms: sockets with
// fewer than K; cpu_us: CPU time since it printed `ready`), then it exits. It also reports and
// exits after --timeout s.
//
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
let lastAny = performance.now();
let cpuAtReady = process.cpuUsage();
let failed = 0;
const settleConnect = () => {
  if (connected + failed !== count) return;
  cpuAtReady = process.cpuUsage();
  print({ ready: connected, failed });
};
const sockets = [];
// Per socket: messages, last seq, time of the last message; and what broke the seq order.
const got = new Array(count).fill(0);
const lastSeq = new Array(count).fill(0);
const lastAt = new Array(count).fill(-1);
let skipped = 0;
let duplicates = 0;
const gaps = new Map();

// µs to 3 significant digits: at most ~900 distinct values per decade, so the report stays small.
const bucket = (us) => {
  const v = Math.max(1, Math.round(us));
  if (v < 1000) return v;
  const unit = 10 ** (Math.floor(Math.log10(v)) - 2);
  return Math.round(v / unit) * unit;
};

const report = (expected) => {
  let missing = skipped;
  let shortRooms = 0;
  if (expected > 0) {
    for (let i = 0; i < count; i++) {
      if (got[i] < expected) shortRooms += 1;
      missing += Math.max(0, expected - lastSeq[i]);
    }
  }
  print({
    received,
    gaps: [...gaps.entries()].sort((a, b) => a[0] - b[0]),
    missing,
    duplicates,
    short_rooms: shortRooms,
    min_room: count > 0 ? Math.min(...got) : 0,
    max_room: count > 0 ? Math.max(...got) : 0,
    cpu_us: (({ user, system }) => user + system)(process.cpuUsage(cpuAtReady)),
  });
  for (const s of sockets) s.close();
  process.exit(0);
};

// `report K W`: report once every socket has K messages, the sockets fell quiet, or W ms passed.
const awaitAll = (expected, waitMs) => {
  const asked = performance.now();
  const check = () => {
    const now = performance.now();
    if (got.every((n) => n >= expected) || now - lastAny > 1000 || now - asked > waitMs) report(expected);
  };
  check();
  setInterval(check, 20);
};

setTimeout(() => report(0), timeoutMs).unref();
createInterface({ input: process.stdin }).on("line", (line) => {
  const [word, k, w] = line.trim().split(/\s+/);
  if (word !== "report") return;
  if (k === undefined) report(0);
  else awaitAll(Number(k), Number(w ?? 10000));
});
for (let i = 0; i < count; i++) {
  const s = io(url, { transports: ["websocket"], query: { room: `r${first + i}` }, reconnection: false });
  s.on("event", (msg) => {
    const now = performance.now();
    received += 1;
    got[i] += 1;
    lastAny = now;
    if (lastAt[i] >= 0) {
      const b = bucket((now - lastAt[i]) * 1000);
      gaps.set(b, (gaps.get(b) ?? 0) + 1);
    }
    lastAt[i] = now;
    const seq = msg?.seq;
    if (typeof seq === "number") {
      if (seq <= lastSeq[i]) duplicates += 1;
      else {
        skipped += seq - lastSeq[i] - 1;
        lastSeq[i] = seq;
      }
    }
  });
  s.on("connect", () => {
    connected += 1;
    if (storm) {
      stormMs.push(performance.now() - began);
      settle();
    }
    settleConnect();
  });
  s.on("connect_error", () => {
    failed += 1;
    settleConnect();
    if (storm) settle();
  });
  sockets.push(s);
  // Pace the handshakes a little so the listen backlog never overflows (not in a storm).
  if (!storm && i % 200 === 199) await new Promise((r) => setTimeout(r, 50));
}
