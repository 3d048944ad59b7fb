#!/usr/bin/env python3
"""Redis time per turn op (enq, start, finish) inside `cf2_batch`: the cost model of dispatch.

Starts a private redis-server, loads lua/chatfleet.lua, and runs turns the way the fleet does in
`chatfleet bench dispatch` (no deltas: the answer is empty): every round, each of the sessions
enqueues a turn, a worker reads the partition stream and starts them, then finishes them, each
step in batches of `--batch` ops. A session's history grows by two messages a round, as in a
closed loop of one user. Per step it reads `INFO commandstats` and `INFO cpu`:

    fcall µs/op      Redis's time inside FCALL per op (the function and the commands it runs)
    cpu µs/op        Redis process CPU per op, I/O and parsing included
    and each command the op ran: calls per op and µs per call

Needs `pip install redis msgpack` (a venv will do) and redis-server on PATH. It measures Redis
alone, so run it with nothing compiling on the box (see docs/benchmarks.md).

    python3 bench/turn-cost.py [--sessions 128] [--rounds 30] [--batch 16] [--lua FILE]
"""
import argparse
from collections import defaultdict

import msgpack

from private_redis import LUA, cpu, private_redis

SESSION = ['meta', 'log', 'hist', 'dedupe', 'dq', 'conns', 'partial', 'flags', 'summary']
STREAM = 'cf:{p01}:turns'
DLQ = 'cf:{p01}:dlq'
CFG = msgpack.packb({'ttl': 86400, 'log_max': 1000, 'hist_max': 200, 'dedupe_max': 64, 'dlq_max': 1000,
                     'lease_ms': 30000, 'group': 'workers', 'archive_max': 0})


def keys(base, tid):
    return [f'{base}:{k}' for k in SESSION] + [f'{base}:turn:{tid}', f'{base}:turn:{tid}:tools', STREAM, DLQ]


class Meter:
    """Commandstats and CPU summed over the rounds, per step."""

    def __init__(self, r):
        self.r, self.ops, self.cpu, self.cmds = r, defaultdict(int), defaultdict(float), {}

    def run(self, step, fn, n):
        self.r.config_resetstat()
        c0 = cpu(self.r)
        fn()
        self.cpu[step] += cpu(self.r) - c0
        self.ops[step] += n
        for name, v in self.r.info('commandstats').items():
            if name in ('cmdstat_config|resetstat', 'cmdstat_info', 'cmdstat_config'):
                continue
            calls, usec = self.cmds.setdefault((step, name[8:]), [0, 0])
            self.cmds[(step, name[8:])] = [calls + v['calls'], usec + v['usec']]

    def report(self):
        total = 0.0
        for step in self.ops:
            n = self.ops[step]
            fcall = self.cmds.get((step, 'fcall'), [0, 0])[1] / n
            total += self.cpu[step] * 1e6 / n
            print(f'{step:8s} ops={n}  fcall µs/op {fcall:6.2f}  cpu µs/op {self.cpu[step] * 1e6 / n:6.2f}')
            for (s, name), (calls, usec) in sorted(self.cmds.items()):
                if s == step and name != 'fcall':
                    print(f'    {name:12s} {calls / n:5.2f} per op, {usec / max(calls, 1):5.2f} µs each')
        print(f'turn     cpu µs/turn {total:6.2f} (enq + read + start + finish)')


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--lua', default=LUA)
    ap.add_argument('--sessions', type=int, default=128)
    ap.add_argument('--rounds', type=int, default=30)
    ap.add_argument('--batch', type=int, default=16)
    a = ap.parse_args()
    with private_redis(a.lua) as r:
        run(r, a)


def batches(r, ops, size):
    """Sends ops ({fields}, keys) in batches; returns the replies in order."""
    out = []
    for i in range(0, len(ops), size):
        ks, args = [], [CFG]
        for fields, k in ops[i:i + size]:
            args.append(msgpack.packb([fields[0], len(ks) + 1] + fields[1:], use_bin_type=False))
            ks += k
        out += r.fcall('cf2_batch', len(ks), *ks, *args)
    return out


def run(r, a):
    r.xgroup_create(STREAM, 'workers', id='$', mkstream=True)
    m = Meter(r)
    bases = [f'cf:{{p01}}:s:t:s{i}' for i in range(a.sessions)]
    for rnd in range(a.rounds):
        tids = [f't{i}r{rnd}' for i in range(a.sessions)]
        enq = [(['enq', tids[i], f'c{rnd}', 'hello there', 'e1', b'', '', 0, 'u'], keys(bases[i], tids[i]))
               for i in range(a.sessions)]
        replies = []
        m.run('enq', lambda: replies.extend(batches(r, enq, a.batch)), a.sessions)
        assert all(x[0] == b'new' for x in replies), replies[:2]
        got = []
        m.run('read', lambda: got.extend(r.xreadgroup('workers', 'w1', {STREAM: '>'}, count=a.sessions)[0][1]),
              a.sessions)
        start, entries = [], {}
        for eid, f in got:
            i = int(f[b't'].decode()[1:].split('r')[0])
            entries[i] = eid.decode()
            start.append((['start', tids[i], eid.decode(), 'w1', f'q{tids[i]}'], keys(bases[i], tids[i])))
        replies = []
        m.run('start', lambda: replies.extend(batches(r, start, a.batch)), a.sessions)
        assert all(x[0] == b'run' and x[1] == 1 for x in replies), replies[:1]
        fin = [(['finish', tids[i], 1, 1, 'done', entries[i], 5, 0, '', '', 0, 'reported', 0], keys(bases[i], tids[i]))
               for i in range(a.sessions)]
        replies = []
        m.run('finish', lambda: replies.extend(batches(r, fin, a.batch)), a.sessions)
        assert all(x[0] == b'ok' for x in replies), replies[:1]
    m.report()


if __name__ == '__main__':
    main()
