#!/usr/bin/env python3
"""Redis time per write op inside `cf3_batch`, by batch size: the cost model of the write path.

Starts a private redis-server, loads lua/chatfleet.lua, enqueues and starts N turns through the
same ops the fleet sends, then sends batches of delta ops (one per turn, each with the next write
index and partial length, as a worker does) and reads `INFO commandstats` and `INFO cpu`:

    fcall µs/op      Redis's time inside FCALL per op (the function and the commands it runs)
    commands µs/op   the commands the ops ran (HMGET, XADD, …), each listed below
    cpu µs/op        Redis process CPU per op, I/O and parsing included

Needs `pip install redis msgpack` (a venv will do) and redis-server on PATH. It measures Redis
alone, so run it with nothing compiling on the box (see docs/benchmarks.md).

    python3 bench/op-cost.py [--kind emitc|emit] [--batches 1,16,128] [--ops 32000]
                             [--lua FILE --format msgpack]

`--format msgpack` sends ops as libraries before the flat op format expect them (e.g. 1527367's).
"""
import argparse

from private_redis import LUA, batch_args, cpu, private_redis

SESSION = ['meta', 'log', 'hist', 'dedupe', 'dq', 'conns', 'partial', 'flags', 'summary']


def session_block(base):
    return [f'{base}:{k}' for k in SESSION]


def turn_block(base, tid):
    return [f'{base}:turn:{tid}', f'{base}:turn:{tid}:tools']


def keys_of(kind, base, tid):
    if kind == 'emitc':  # the delta layout: meta, log, partial, turn
        return [f'{base}:meta', f'{base}:log', f'{base}:partial', f'{base}:turn:{tid}']
    return session_block(base) + turn_block(base, tid)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--lua', default=LUA)
    ap.add_argument('--kind', default='emitc')
    ap.add_argument('--batches', default='1,16,128')
    ap.add_argument('--ops', type=int, default=32000)
    ap.add_argument('--turns', type=int, default=128)
    ap.add_argument('--format', choices=['flat', 'msgpack'], default='flat')
    a = ap.parse_args()

    with private_redis(a.lua) as r:
        run(r, a)


def run(r, a):
    stream = 'cf:{p01}:turns'
    r.xgroup_create(stream, 'workers', id='$', mkstream=True)

    def call(ops):
        keys, args = batch_args(ops, a.format, {'lease_ms': 3000})
        return r.fcall('cf3_batch', len(keys), *keys, *args)

    turns = []
    for i in range(a.turns):
        base, tid = f'cf:{{p01}}:s:t:s{i}', f't{i}'
        ks = session_block(base) + turn_block(base, tid) + [stream]
        (reply,) = call([(['enq', tid, f'c{i}', 'hello', 'e1', '', '', 0, 'u', 0, '', ''], ks)])
        assert reply[0] == b'new', reply
        turns.append({'base': base, 'tid': tid, 'wi': 0, 'plen': 0})
    for entry_id, fields in r.xreadgroup('workers', 'w1', {stream: '>'}, count=a.turns)[0][1]:
        t = turns[int(fields[b't'].decode()[1:])]
        ks = session_block(t['base']) + turn_block(t['base'], t['tid']) + [stream]
        (reply,) = call([(['start', t['tid'], entry_id.decode(), 'w1', 'r' + t['tid']], ks)])
        assert reply[0] == b'run', reply

    text = 'tok en'
    for b in [int(x) for x in a.batches.split(',')]:
        rounds = max(20, a.ops // b)
        r.config_resetstat()
        cpu0 = cpu(r)
        for k in range(rounds):
            ops = []
            for j in range(b):
                t = turns[(k * b + j) % len(turns)]
                t['wi'] += 1
                ops.append(([a.kind, t['tid'], 1, t['wi'], text, 0, t['plen']], keys_of(a.kind, t['base'], t['tid'])))
                t['plen'] += len(text)
            replies = call(ops)
            bad = [x for x in replies if not (isinstance(x, list) and isinstance(x[0], int) and x[0] > 0)]
            if bad:
                raise SystemExit(f'an op failed: {bad[0]}')
        stats = r.info('commandstats')
        n = rounds * b
        inner = {k[8:]: v for k, v in stats.items() if k not in ('cmdstat_fcall', 'cmdstat_config|resetstat',
                                                                 'cmdstat_info', 'cmdstat_config')}
        print(f'{a.kind} batch={b:4d} ops={n}  fcall µs/op {stats["cmdstat_fcall"]["usec"] / n:6.2f}  '
              f'commands µs/op {sum(v["usec"] for v in inner.values()) / n:6.2f}  '
              f'cpu µs/op {(cpu(r) - cpu0) * 1e6 / n:6.2f}')
        for name, v in sorted(inner.items()):
            print(f'    {name:10s} {v["calls"] / n:5.2f} per op, {v["usec_per_call"]:5.2f} µs each')


if __name__ == '__main__':
    main()
