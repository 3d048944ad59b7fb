"""A private redis-server for the cost tools (op-cost.py, turn-cost.py): a free loopback port, a
temp dir, no persistence, the function library loaded; stopped when the block ends."""
import contextlib
import os
import socket
import subprocess
import tempfile
import time

import redis

LUA = os.path.join(os.path.dirname(__file__), '..', 'lua', 'chatfleet.lua')


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
