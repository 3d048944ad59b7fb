"""A private redis-server for the cost tools (op-cost.py, turn-cost.py): a free loopback port, a
temp dir, no persistence, the function library loaded; stopped when the block ends. Also the
encoding of a `cf3_batch` call, in today's flat format or the MessagePack one of libraries before
it (`--format msgpack`, to measure an older lua/chatfleet.lua beside this one)."""
import contextlib
import os
import socket
import subprocess
import tempfile
import time

import msgpack
import redis

LUA = os.path.join(os.path.dirname(__file__), '..', 'lua', 'chatfleet.lua')


SETTINGS = {'ttl': 86400, 'log_max': 1000, 'hist_max': 200, 'dedupe_max': 64, 'dlq_max': 1000,
            'lease_ms': 30000, 'group': 'workers', 'archive_max': 0}
ORDER = ['ttl', 'log_max', 'hist_max', 'dedupe_max', 'dlq_max', 'lease_ms', 'group', 'archive_max']


def batch_args(ops, fmt='flat', settings=None):
    """KEYS and ARGV of one cf3_batch call for ops, each ([kind, field, ...], keys)."""
    cfg = dict(SETTINGS, **(settings or {}))
    keys = []
    if fmt == 'msgpack':
        args = [msgpack.packb(cfg)]
        for fields, ks in ops:
            args.append(msgpack.packb([fields[0], len(keys) + 1] + list(fields[1:]), use_bin_type=False))
            keys += ks
        return keys, args
    args = [cfg[k] for k in ORDER]
    for fields, ks in ops:
        args += [fields[0], len(keys) + 1, len(fields) - 1] + list(fields[1:])
        keys += ks
    return keys, args


def cpu(r):
    """Redis process CPU (user + system), in seconds."""
    c = r.info('cpu')
    return c['used_cpu_user'] + c['used_cpu_sys']


@contextlib.contextmanager
def private_redis(lua=LUA):
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    tmp = tempfile.mkdtemp()
    server = subprocess.Popen(['redis-server', '--port', str(port), '--bind', '127.0.0.1', '--save', '',
                               '--appendonly', 'no', '--dir', tmp], stdout=subprocess.DEVNULL)
    try:
        r = redis.Redis(port=port)
        for _ in range(250):
            try:
                r.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.02)
        with open(lua) as f:
            r.function_load(f.read(), replace=True)
        yield r
    finally:
        server.terminate()
        server.wait()
