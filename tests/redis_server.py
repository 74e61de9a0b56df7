"""A throwaway Redis for the test run, on a loopback port, without persistence.

python -m tests.redis_server -- pytest ...   runs the command with TASKS_BACKEND=rq and
                                             REDIS_URL pointing at it
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

from tests.pgcluster import free_port


class RedisMissing(RuntimeError):
    pass


@contextlib.contextmanager
def temporary_redis() -> Iterator[str]:
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not os.path.exists(binary):
        raise RedisMissing("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    directory = tempfile.mkdtemp(prefix="gatewaymgr-redis-")
    process = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            directory,
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(10)
        shutil.rmtree(directory, ignore_errors=True)


def main(argv: list[str]) -> int:
    command = argv[argv.index("--") + 1 :] if "--" in argv else argv
    try:
        with temporary_redis() as url:
            print(f"Redis test server at {url}", flush=True)
            env = {**os.environ, "TASKS_BACKEND": "rq", "REDIS_URL": url}
            return subprocess.run(command, env=env).returncode
    except RedisMissing as error:
        print(error, file=sys.stderr)
        return 97


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
