#!/usr/bin/env python3
"""Redis time per turn op (enq, start, finish) inside `cf3_batch`: the cost model of dispatch.

Starts a private redis-server, loads lua/chatfleet.lua, and runs turns the way the fleet does in
`chatfleet bench dispatch` (no deltas: the answer is empty): every round, each of the sessions
enqueues a turn, a worker reads the partition stream and starts them, then finishes them, each
step in batches of `--batch` ops. A session's history grows by two messages a round, as in a
closed loop of one user. Per step it reads `INFO commandstats` and `INFO cpu`:

    fcall µs/op      Redis's time inside FCALL per op (the function and the commands it runs)
    cpu µs/op        Redis process CPU per op, I/O and parsing included
    and each command the op ran: calls per op and µs per call

A `start` asks for no history in its reply, and the history of each started turn is then read
with a plain LRANGE (the `history` step), as the worker does; `--history-inside` measures the
builds before that, whose `start` returned it.

With `--quota` the enqueue takes the tenant's quota slot in its call, as the fleet does on a
single Redis, and the slot is freed when the turn ends: by the `finish` op itself (today's
library), or, with `--format msgpack` (libraries before the flat op format), by one
`cf3_quota_release` call per turn, as the worker sent it then (the `release` step).

Needs `pip install redis msgpack` (a venv will do) and redis-server on PATH. It measures Redis
alone, so run it with nothing compiling on the box (see docs/benchmarks.md).

    python3 bench/turn-cost.py [--sessions 128] [--rounds 30] [--batch 16] [--quota]
                               [--lua FILE --format msgpack] [--history-inside]
"""
import argparse
from collections import defaultdict

from private_redis import LUA, batch_args, cpu, private_redis

SESSION = ['meta', 'log', 'hist', 'dedupe', 'dq', 'conns', 'partial', 'flags', 'summary']
STREAM = 'cf:{p01}:turns'
DLQ = 'cf:{p01}:dlq'
INFLIGHT = 'cf:{t:t}:q:inflight'


def keys(base, tid):
    return [f'{base}:{k}' for k in SESSION] + [f'{base}:turn:{tid}', f'{base}:turn:{tid}:tools', STREAM, DLQ]


def tpm(r):
    """The quota's counter of the current minute, by Redis's clock."""
    sec, _ = r.time()
    return f'cf:{{t:t}}:q:tpm:{sec // 60}'


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
        print(f'turn     cpu µs/turn {total:6.2f} (every step)')


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--lua', default=LUA)
    ap.add_argument('--sessions', type=int, default=128)
    ap.add_argument('--rounds', type=int, default=30)
    ap.add_argument('--batch', type=int, default=16)
    ap.add_argument('--format', choices=['flat', 'msgpack'], default='flat')
    ap.add_argument('--quota', action='store_true')
    ap.add_argument('--history-inside', action='store_true',
                    help='start returns the history in its reply (builds before the history was read beside it)')
    a = ap.parse_args()
    with private_redis(a.lua) as r:
        run(r, a)


def batches(r, ops, size, fmt):
    """Sends ops ([kind, fields...], keys) in batches; returns the replies in order."""
    out = []
    for i in range(0, len(ops), size):
        ks, args = batch_args(ops[i:i + size], fmt)
        out += r.fcall('cf3_batch', len(ks), *ks, *args)
    return out


def run(r, a):
    r.xgroup_create(STREAM, 'workers', id='$', mkstream=True)
    m = Meter(r)
    bases = [f'cf:{{p01}}:s:t:s{i}' for i in range(a.sessions)]
    for rnd in range(a.rounds):
        tids = [f't{i}r{rnd}' for i in range(a.sessions)]
        minute = tpm(r)
        enq = []
        for i in range(a.sessions):
            fields = ['enq', tids[i], f'c{rnd}', 'hello there', 'e1', b'', '', 0, 'u', 0, '', '']
            ks = keys(bases[i], tids[i])[:12]
            if a.quota:
                ask = [f'{bases[i]}|{tids[i]}', 0, 0, 600000, 10]
                fields += ask if a.format == 'flat' else [ask]
                ks += [INFLIGHT, minute]
            enq.append((fields, ks))
        replies = []
        m.run('enq', lambda: replies.extend(batches(r, enq, a.batch, a.format)), a.sessions)
        assert all(x[0] == b'new' for x in replies), replies[:2]
        got = []
        m.run('read', lambda: got.extend(r.xreadgroup('workers', 'w1', {STREAM: '>'}, count=a.sessions)[0][1]),
              a.sessions)
        start, entries = [], {}
        for eid, f in got:
            i = int(f[b't'].decode()[1:].split('r')[0])
            entries[i] = eid.decode()
            fields = ['start', tids[i], eid.decode(), 'w1', f'q{tids[i]}']
            if not a.history_inside:
                fields.append('1')
            start.append((fields, keys(bases[i], tids[i])))
        replies = []
        m.run('start', lambda: replies.extend(batches(r, start, a.batch, a.format)), a.sessions)
        if not a.history_inside:
            # The worker reads each started turn's history beside the op, as a plain LRANGE.
            def read_history():
                with r.pipeline(transaction=False) as pipe:
                    for i in range(a.sessions):
                        pipe.lrange(f'{bases[i]}:hist', -200, -1)
                    pipe.execute()
            m.run('history', read_history, a.sessions)
        assert all(x[0] == b'run' and x[1] == 1 for x in replies), replies[:1]
        fin = []
        for i in range(a.sessions):
            fields = ['finish', tids[i], 1, 1, 'done', entries[i], 5, 0, '', '', 0, 'reported', 0]
            ks = keys(bases[i], tids[i])
            if a.format == 'flat':
                fields += ['', '', '', '']
                if a.quota:
                    fields.append(len(ks))
                    ks = ks + [INFLIGHT]
            fin.append((fields, ks))
        replies = []
        m.run('finish', lambda: replies.extend(batches(r, fin, a.batch, a.format)), a.sessions)
        assert all(x[0] == b'ok' for x in replies), replies[:1]
        if a.quota and a.format == 'msgpack':
            m.run('release', lambda: [r.fcall('cf3_quota_release', 2, INFLIGHT, minute, '0', f'{bases[i]}|{tids[i]}')
                                      for i in range(a.sessions)], a.sessions)
        if a.quota:
            assert r.zcard(INFLIGHT) == 0, 'a quota slot was not freed'
    m.report()


if __name__ == '__main__':
    main()
