"""How long a reload takes, and whether sessions notice: ``smtpgate``'s reload (issue 12 item 2) with N
sessions open, alternating mechanisms and certificate, while a client keeps opening new sessions.

    .venv/bin/python bench/reload_latency.py [--sessions 50] [--reloads 20]

Prints the reload time (median, max), the new sessions served during the reloads and how many failed,
and how many of the open sessions failed to finish (AUTH, MAIL, RCPT, DATA) afterwards. Runs the server
in-process on loopback (tests/fixtures/server.py), so the figures include no process start-up.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.fixtures.certs import make_pki  # noqa: E402
from tests.fixtures.server import run_server  # noqa: E402
from tests.fixtures.reload import config, finish_session, open_session  # noqa: E402
from tests.smtpclient import Raw  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sessions", type=int, default=50)
    ap.add_argument("--reloads", type=int, default=20)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="smtpgate-reload-bench-"))
    pki_a, pki_b = make_pki(tmp / "a"), make_pki(tmp / "b")
    path = tmp / "smtpgate.toml"
    path.write_text(config(pki_a, tmp))
    with run_server(path.read_text(), tmp, pki=pki_a) as srv:
        port = srv.port("submission")
        held = [open_session(port if i % 2 == 0 else srv.port("submissions"), i % 2 == 1)[0]
                for i in range(args.sessions)]
        stop, served, failed = threading.Event(), [0], [0]

        def hammer() -> None:
            while not stop.is_set():
                try:
                    c = Raw(port)
                    ok = c.cmd("EHLO bench.test").startswith("250")
                    c.cmd("QUIT")
                    c.close()
                    served[0] += ok
                    failed[0] += not ok
                except OSError:
                    failed[0] += 1
        thread = threading.Thread(target=hammer)
        thread.start()
        times = []
        for i in range(args.reloads):
            second = i % 2 == 0
            path.write_text(config(pki_b if second else pki_a, tmp,
                                   mechanisms='["login"]' if second else '["plain", "login"]'))
            started = time.perf_counter()
            assert srv.call(srv.server.reload(str(path)))
            times.append(time.perf_counter() - started)
        stop.set()
        thread.join()
        unfinished = sum(not finish_session(c)[4].startswith("250") for c in held)
    print(f"reloads: {args.reloads} with {args.sessions} sessions open; reload time median "
          f"{statistics.median(times) * 1000:.1f} ms, max {max(times) * 1000:.1f} ms")
    print(f"new sessions during the reloads: {served[0]} served, {failed[0]} failed; "
          f"open sessions that failed to finish afterwards: {unfinished} of {args.sessions}")


if __name__ == "__main__":
    main()
