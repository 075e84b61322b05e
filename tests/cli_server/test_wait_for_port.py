"""The helper that finds a child server's port in its log, held to the case that broke it:
several log lines arriving in one write."""

from __future__ import annotations

import subprocess
import sys

from tests.cli_server.conftest import wait_for_port

CHILD = """
import sys, time
sys.stderr.write('{"msg": "storage healthy: SERVING"}\\nserving on 127.0.0.1:4242\\nmetrics on x\\n')
sys.stderr.flush()
time.sleep(30)
"""


def test_the_serving_line_is_found_when_it_shares_a_write_and_what_follows_stays() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        assert wait_for_port(child, timeout=20) == 4242
        assert child.stderr is not None
        assert child.stderr.readline() == "metrics on x\n"  # nothing past the serving line was eaten
    finally:
        child.kill()
        child.wait(timeout=10)
        if child.stderr is not None:
            child.stderr.close()
