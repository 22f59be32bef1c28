"""Find or start a local Redis >= 7 (used by `make test`, `make demo` and the demo's launcher).

Order: $REDIS_URL if set and answering; else redis://127.0.0.1:6379/0 if answering; else start a
local `redis-server` on a free port (pid and log under <state dir>, default .cache/redis/); else
install it with apt when running as root; else fail with a message saying how to get one.
`python -m rethinker.local_redis` prints the URL on stdout; messages go to stderr.

With a password (`start_local(..., password=...)`), the server is started with `requirepass` from a
0600 config file in the state dir (never on its command line), and the returned URL carries no
password: clients take it from `redis.password`.  (`rethinker up` runs its own Redis as a supervised
child instead: `rethinker.launcher.plan_redis`.)
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

from common.errors import LauncherError

DEFAULT_STATE = Path(".cache") / "redis"
DEFAULT_URL = "redis://127.0.0.1:6379/0"


def say(msg: str) -> None:
    print(f"ensure_redis: {msg}", file=sys.stderr)


def answering(url: str, *, password: str | None = None, tls_ca_certs: str | None = None,
              tls_insecure: bool = False) -> bool:
    """A Redis >= 7 answers at `url` (authenticating with `password`; TLS settings for rediss://)."""
    kw: dict = {"socket_connect_timeout": 1, "socket_timeout": 2}
    if password is not None:
        kw["password"] = password
    if url.startswith("rediss://"):
        if tls_ca_certs:
            kw["ssl_ca_certs"] = tls_ca_certs
        if tls_insecure:
            kw["ssl_cert_reqs"] = "none"
    try:
        client = redis.Redis.from_url(url, **kw)
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


def free_ports(n: int) -> list[int]:
    """``n`` distinct free ports on 127.0.0.1 (all held open until the last is chosen)."""
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def start_local(state: Path = DEFAULT_STATE, *, appendonly: bool = False, password: str | None = None) -> str | None:
    """Start a daemonized redis-server on a free port (requiring `password` when given); returns
    its URL, without the password (None when impossible)."""
    binary = shutil.which("redis-server")
    if binary is None and os.geteuid() == 0 and shutil.which("apt-get"):
        say("redis-server not found; installing it with apt-get (running as root)")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], check=False, env=env, stdout=sys.stderr)
        subprocess.run(["apt-get", "install", "-y", "-qq", "redis-server"], check=False, env=env, stdout=sys.stderr)
        binary = shutil.which("redis-server")
    if binary is None:
        return None
    state = Path(state).resolve()
    state.mkdir(parents=True, exist_ok=True)
    url_file = state / "url"
    if url_file.exists() and answering(url_file.read_text().strip(), password=password):
        return url_file.read_text().strip()
    port = free_port()
    conf = state / "redis.conf"
    fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        if password:
            fh.write('requirepass "' + password.replace("\\", "\\\\").replace('"', '\\"') + '"\n')
    os.chmod(conf, 0o600)
    subprocess.run(
        [binary, str(conf), "--port", str(port), "--bind", "127.0.0.1", "--daemonize", "yes", "--save", "",
         "--appendonly", "yes" if appendonly else "no", "--dir", str(state), "--pidfile", str(state / "redis.pid"),
         "--logfile", str(state / "redis.log")],
        check=True,
        stdout=sys.stderr,
    )
    url = f"redis://127.0.0.1:{port}/0"
    for _ in range(50):
        if answering(url, password=password):
            url_file.write_text(url)
            say(f"started redis-server on port {port} (pid file {state / 'redis.pid'})")
            return url
        time.sleep(0.1)
    return None


class RedisUnavailable(LauncherError, RuntimeError):
    """No Redis could be found or started; the message says how to get one."""


def ensure_redis(preferred: str | None = None, *, state: Path = DEFAULT_STATE) -> str:
    """The URL of a reachable Redis >= 7: `preferred`, $REDIS_URL, the default port, or a new one."""
    candidates = [u for u in (preferred, os.environ.get("REDIS_URL"), DEFAULT_URL) if u]
    for url in dict.fromkeys(candidates):
        if answering(url):
            return url
    url = start_local(state)
    if url:
        return url
    raise RedisUnavailable(
        "no Redis >= 7 reachable and none could be started. Install one "
        "(Debian/Ubuntu: sudo apt-get install redis-server; macOS: brew install redis) "
        "or set REDIS_URL=redis://host:port/0"
    )


def main() -> int:
    try:
        print(ensure_redis())
    except RedisUnavailable as exc:
        say(str(exc))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
