// BullMQ 6 (ioredis) doing what `chatfleet bench dispatch` does: no-op jobs through the whole
// queue path (add, claim, complete). Run side by side with chatfleet on the same Redis.
//
//   node bullmq-dispatch.mjs work    --redis URL --jobs N --concurrency C
//   node bullmq-dispatch.mjs produce --redis URL --jobs N --concurrency C
//
// `work` prints {"ready":true}, then {"done":N,"seconds":S,"jobs_per_sec":R} once N jobs have
// completed (timed from the first job it saw). `produce` adds N jobs with C adds in flight and
// prints {"added":N,"seconds":S}. Every loop is bounded by N and by --timeout seconds.
import { Queue, Worker } from "bullmq";
import IORedis from "ioredis";

const args = Object.fromEntries(
  process.argv.slice(3).reduce((acc, v, i, a) => (i % 2 === 0 ? [...acc, [v.replace(/^--/, ""), a[i + 1]]] : acc), []),
);
const role = process.argv[2];
const url = args.redis ?? "redis://127.0.0.1:6379";
const jobs = Number(args.jobs ?? 10000);
const concurrency = Number(args.concurrency ?? 100);
const timeoutMs = Number(args.timeout ?? 120) * 1000;
const queueName = args.queue ?? "bench";
const print = (o) => process.stdout.write(JSON.stringify(o) + "\n");
const connection = new IORedis(url, { maxRetriesPerRequest: null });
setTimeout(() => {
  print({ error: "timeout" });
  process.exit(2);
}, timeoutMs).unref();

if (role === "work") {
  let done = 0;
  let first = 0;
  const worker = new Worker(queueName, async () => {}, {
    connection,
    concurrency,
    removeOnComplete: { count: 0 },
    removeOnFail: { count: 0 },
  });
  worker.on("active", () => {
    if (!first) first = performance.now();
  });
  worker.on("completed", async () => {
    done += 1;
    if (done === jobs) {
      const seconds = (performance.now() - first) / 1000;
      print({ done, seconds, jobs_per_sec: jobs / seconds });
      await worker.close();
      await connection.quit();
      process.exit(0);
    }
  });
  await worker.waitUntilReady();
  print({ ready: true });
} else if (role === "produce") {
  const queue = new Queue(queueName, {
    connection,
    defaultJobOptions: { removeOnComplete: true, removeOnFail: true },
  });
  const start = performance.now();
  let next = 0;
  const lane = async () => {
    while (next < jobs) {
      next += 1;
      await queue.add("noop", {});
    }
  };
  await Promise.all(Array.from({ length: concurrency }, lane));
  print({ added: jobs, seconds: (performance.now() - start) / 1000 });
  await queue.close();
  await connection.quit();
} else {
  print({ error: `unknown role ${role}` });
  process.exit(2);
}
