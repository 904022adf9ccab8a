"""The scoring server shared by the maths verifier and the reasoning-gym scorer: replies in order,
a bounded wait, and a fresh server after one that overran or died."""

import pickle
import time

import pytest

from sorl.scoring_server import ScoringServer

# sleeps for request["sleep"] seconds, then echoes request["x"]
ECHO = (
    "import json, sys, time\n"
    "from sorl.scoring_server import serving_channel, write_all\n"
    "channel = serving_channel()\n"
    "print('library noise goes to stderr')\n"
    "write_all(channel, b'ready\\n')\n"
    "for line in sys.stdin.buffer:\n"
    "    request = json.loads(line)\n"
    "    time.sleep(request['sleep'])\n"
    "    write_all(channel, f\"{request['x']}\\n\".encode())\n"
)


@pytest.fixture
def server():
    server = ScoringServer(ECHO, "echo server", reply_timeout=1.0, startup_timeout=60.0)
    yield server
    server.close()


def test_replies_come_back_in_order(server):
    assert [server.ask({"x": x, "sleep": 0}) for x in (1, 2, 3)] == [b"1\n", b"2\n", b"3\n"]


def test_an_overrun_is_cut_at_the_bound_and_the_next_request_gets_a_fresh_server(server):
    server.ask({"x": 0, "sleep": 0})
    first = server._process
    started = time.perf_counter()
    assert server.ask({"x": 1, "sleep": 30}) is None
    assert time.perf_counter() - started < 5.0  # the bound is 1 s; 30 s would mean it waited
    assert server._process is None and first.poll() is not None  # killed
    assert server.ask({"x": 2, "sleep": 0}) == b"2\n"


def test_a_dead_server_gives_none_then_restarts(server):
    server.ask({"x": 0, "sleep": 0})
    server._process.kill()
    server._process.wait()
    assert server.ask({"x": 1, "sleep": 0}) is None
    assert server.ask({"x": 2, "sleep": 0}) == b"2\n"


def test_a_server_that_never_gets_ready_is_an_error():
    silent = ScoringServer("import time; time.sleep(30)", "silent server", reply_timeout=1.0, startup_timeout=1.0)
    with pytest.raises(RuntimeError, match="silent server did not start within 1.0 s"):
        silent.ask({})
    assert silent._process is None


def test_a_pickled_copy_starts_its_own_server(server):
    server.ask({"x": 0, "sleep": 0})
    copy = pickle.loads(pickle.dumps(server))
    try:
        assert copy._process is None
        assert copy.ask({"x": 5, "sleep": 0}) == b"5\n"
        assert copy._process.pid != server._process.pid
    finally:
        copy.close()
