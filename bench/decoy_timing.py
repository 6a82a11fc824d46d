"""Unknown user vs wrong password (issue 9 item 8): what each lookup spends per attempt.

    .venv/bin/python bench/decoy_timing.py [--tries 200]

Prints, for a ``list/`` whose first entry is plaintext next to SHA512-CRYPT users, and for a ``db/`` SQLite
table of SHA512-CRYPT users probed right after a login with a plaintext account (how an attacker chose the
decoy when it was "the last secret seen"), the median CPU time of an unknown-user attempt and of a
wrong-password attempt. CPU time, as in tests/integration/test_decoy_timing.py: it is the work that
differs, and it does not swing with the machine's load. Target: within 10 %.
"""
from __future__ import annotations

import argparse
import asyncio
import sqlite3
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

warnings.simplefilter("ignore", DeprecationWarning)
import crypt  # noqa: E402  (deprecated in 3.11+, still what makes "$6$" hashes here)

from smtpgate.config.model import DatabaseSettings, ListSettings  # noqa: E402
from smtpgate.lookup.base import Credentials  # noqa: E402
from smtpgate.lookup.list import ListLookup  # noqa: E402
from smtpgate.lookup.sql import SqlDatabase  # noqa: E402

HASH = "{SHA512-CRYPT}" + crypt.crypt("not-guessed", "$6$rounds=5000$benchsalt$")


def pw(user: str, secret: str) -> Credentials:
    return Credentials(mechanism="PLAIN", username=user, secret=secret)


async def medians(lookup, known: str, tries: int, before_unknown: Credentials | None = None) -> tuple[float, float]:
    wrong, missing = [], []
    for i in range(tries):
        for user, out in ((known, wrong), ("nobody@example.org", missing)):
            if out is missing and before_unknown is not None:
                await lookup.authenticate(before_unknown)
            t = time.process_time()
            await lookup.authenticate(pw(user, f"guess-{i}"))
            out.append(time.process_time() - t)
    return statistics.median(missing), statistics.median(wrong)


def show(what: str, unknown: float, wrong: float) -> None:
    print(f"{what:58s} unknown {unknown * 1e3:7.3f} ms   wrong password {wrong * 1e3:7.3f} ms   "
          f"ratio {unknown / wrong:5.2f}")


async def main(tries: int) -> None:
    lk = ListLookup(ListSettings(id="u", entries=["first@example.org:plain", f"slow@example.org:{HASH}"]))
    await lk.start()
    show("list/ (plaintext first entry, SHA512-CRYPT user)", *await medians(lk, "slow@example.org", tries))

    path = Path(tempfile.mkdtemp()) / "auth.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE users (name TEXT PRIMARY KEY, secret TEXT)")
        conn.executemany("INSERT INTO users VALUES (?, ?)", [("plain@example.org", "{PLAIN}plainpw"),
                                                              ("u@example.org", HASH)])
    settings = DatabaseSettings(id="sql", address=f"sqlite://{path}", lookups={"auth": "SELECT secret FROM users "
                                                                                    "WHERE name = ?"})
    if hasattr(settings, "decoy_scheme"):
        settings.decoy_scheme = "SHA512-CRYPT"
    auth = SqlDatabase(settings).lookup("auth")
    await auth.start()
    show("db/ SQLite SHA512-CRYPT, plaintext login before each probe",
         *await medians(auth, "u@example.org", tries, before_unknown=pw("plain@example.org", "plainpw")))
    await auth.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tries", type=int, default=200)
    asyncio.run(main(parser.parse_args().tries))
    sys.exit(0)
