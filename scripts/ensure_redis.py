"""Make sure a Redis >= 7 is reachable and print its URL on stdout (used by `make test/demo`).

Order: $REDIS_URL if set and answering; else redis://127.0.0.1:6379/0 if answering; else start a
local `redis-server` on a free port (pid and log under .cache/redis/); else install it with apt when
running as root; else exit 1 with a message saying how to get one.  Messages go to stderr.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parent.parent
STATE = ROOT / ".cache" / "redis"


def say(msg: str) -> None:
    print(f"ensure_redis: {msg}", file=sys.stderr)


def answering(url: str) -> bool:
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=2)
        info = client.info("server")
        major = int(str(info.get("redis_version", "0")).split(".")[0])
        if major < 7:
            say(f"{url} runs Redis {info.get('redis_version')}, need >= 7")
            return False
        return True
    except (redis.RedisError, OSError, ValueError):
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_local() -> str | None:
    binary = shutil.which("redis-server")
    if binary is None and os.geteuid() == 0 and shutil.which("apt-get"):
        say("redis-server not found; installing it with apt-get (running as root)")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], check=False, env=env, stdout=sys.stderr)
        subprocess.run(["apt-get", "install", "-y", "-qq", "redis-server"], check=False, env=env, stdout=sys.stderr)
        binary = shutil.which("redis-server")
    if binary is None:
        return None
    STATE.mkdir(parents=True, exist_ok=True)
    url_file = STATE / "url"
    if url_file.exists() and answering(url_file.read_text().strip()):
        return url_file.read_text().strip()
    port = free_port()
    subprocess.run(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--daemonize", "yes", "--save", "",
         "--appendonly", "no", "--dir", str(STATE), "--pidfile", str(STATE / "redis.pid"),
         "--logfile", str(STATE / "redis.log")],
        check=True,
        stdout=sys.stderr,
    )
    url = f"redis://127.0.0.1:{port}/0"
    for _ in range(50):
        if answering(url):
            url_file.write_text(url)
            say(f"started redis-server on port {port} (pid file {STATE / 'redis.pid'})")
            return url
        time.sleep(0.1)
    return None


def main() -> int:
    candidates = [os.environ["REDIS_URL"]] if os.environ.get("REDIS_URL") else []
    candidates.append("redis://127.0.0.1:6379/0")
    for url in candidates:
        if answering(url):
            print(url)
            return 0
    url = start_local()
    if url:
        print(url)
        return 0
    say(
        "no Redis >= 7 reachable and none could be started. Install one "
        "(Debian/Ubuntu: sudo apt-get install redis-server; macOS: brew install redis) "
        "or set REDIS_URL=redis://host:port/0"
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
