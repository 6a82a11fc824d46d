#!/usr/bin/env python3
"""What metrics and the management listener cost: smtpgate with them off, and on (scraped), same run.

    .venv/bin/python bench/metrics_overhead.py                      # 5 rounds x 5 s, AUTH PLAIN, c=64
    .venv/bin/python bench/metrics_overhead.py --rounds 7 --duration 8 --conc 64 --scrape-interval 1 --submit

Variants, started side by side on free 127.0.0.1 ports and measured alternately (A B C, C B A, ...):
  off     no ``protocol = "http"`` listener (log lines as usual, level info); metrics are still counted,
          as a reload may add the listener (before that change nothing was counted here: compare with
          ``SMTPGATE_BEFORE=<rev> bench/run.py --servers smtpgate,smtpgate-before``)
  on      a management listener, and a scraper reading /metrics every --scrape-interval seconds during
          the measured window (far more often than Prometheus' usual 15 s)
  quiet   like off, with ``server.log.level = "warning"``: what the per-session log lines
          (connect, auth, disconnect ...) cost, for comparison
Each figure is the median over the rounds; the target for issue 12 is "on" within 5 % of "off".
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # noqa: E402  (load generator driver, fixtures)
import servers  # noqa: E402


class Variant(servers.Smtpgate):
    def __init__(self, *args, mode: str, **kw):
        super().__init__(*args, **kw)
        self.mode = mode
        self.mgmt_port = servers.free_port() if mode == "on" else None
        self.name = f"smtpgate-{mode}"

    def config_text(self, users_db=None) -> str:
        text = super().config_text(users_db)
        if self.mode == "on":
            text += f'\n[server.listener.mgmt]\nbind = "127.0.0.1:{self.mgmt_port}"\nprotocol = "http"\n'
        if self.mode == "quiet":
            text = text.replace('hostname = "bench.localhost"\n',
                                'hostname = "bench.localhost"\n\n[server.log]\nlevel = "warning"\n', 1)
        return text


class Scraper(threading.Thread):
    def __init__(self, port: int, interval: float):
        super().__init__(daemon=True)
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.interval = interval
        self.stop = threading.Event()
        self.scrapes = 0
        self.last = b""

    def run(self) -> None:
        while not self.stop.wait(self.interval):
            with urllib.request.urlopen(self.url, timeout=10) as resp:
                self.last = resp.read()
            self.scrapes += 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--conc", type=int, default=64)
    ap.add_argument("--users", type=int, default=200)
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--mech", default="plain", choices=["plain", "login", "noop"])
    ap.add_argument("--submit", action="store_true", help="also MAIL/RCPT/DATA a 2 KiB message per session")
    ap.add_argument("--scrape-interval", type=float, default=1.0)
    ap.add_argument("--variants", default="off,on,quiet")
    a = ap.parse_args()
    run.raise_nofile()
    modes = a.variants.split(",")
    with tempfile.TemporaryDirectory(prefix="smtpgate-metrics-bench-") as tmp:
        root = Path(tmp)
        users = run.make_users(root, a.users)
        variants = [Variant(root / m, users, mode=m, wait_s=0.0, total=3) for m in modes]
        figures: dict[str, list[dict]] = {m: [] for m in modes}
        load_args = ["--concurrency", str(a.conc), "--duration", str(a.duration), "--warmup", str(a.warmup),
                     "--procs", str(a.procs), "--mech", a.mech] + (["--submit"] if a.submit else [])
        started = []
        try:
            for v in variants:
                v.__enter__()
                started.append(v)
            for r in range(a.rounds):
                order = variants if r % 2 == 0 else list(reversed(variants))
                for v in order:
                    scraper = None
                    if v.mode == "on":
                        scraper = Scraper(v.mgmt_port, a.scrape_interval)
                        scraper.start()
                    res = run.run_load(v, users, load_args, timeout=a.duration + a.warmup + 120)
                    if scraper is not None:
                        scraper.stop.set()
                        scraper.join(15)
                        res["scrapes"] = scraper.scrapes
                        if a.scrape_interval < a.duration and not scraper.last.startswith(b"# HELP"):
                            raise RuntimeError("the scraper got no metrics")
                    figures[v.mode].append(res)
                    print(f"round {r + 1} {v.name}: {res['sessions_per_s']:,.0f} sessions/s, "
                          f"{res.get('server_cpu_us_per_session') or 0:,.0f} µs CPU/session, "
                          f"errors {res.get('errors') or 0}" + (f", {res['scrapes']} scrapes" if scraper else ""),
                          file=sys.stderr)
        finally:
            for v in started:
                v.__exit__(None, None, None)

    def med(mode: str, key: str) -> float:
        return statistics.median(x.get(key) or 0 for x in figures[mode])

    base = med("off", "sessions_per_s") if "off" in figures else None
    print(f"\nmetrics overhead: {a.mech}{' + submit' if a.submit else ''}, concurrency {a.conc}, {a.rounds} rounds x "
          f"{a.duration:g} s, scrape every {a.scrape_interval:g} s\n")
    print("| variant | sessions/s (median) | vs off | server CPU µs/session | rounds (sessions/s) |")
    print("|---|---|---|---|---|")
    for mode in modes:
        sps = med(mode, "sessions_per_s")
        rel = f"{(sps / base - 1) * 100:+.1f} %" if base else "-"
        rounds = " / ".join(f"{x['sessions_per_s']:,.0f}" for x in figures[mode])
        print(f"| {mode} | {sps:,.0f} | {rel} | {med(mode, 'server_cpu_us_per_session'):,.0f} | {rounds} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
