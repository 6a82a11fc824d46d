"""contrib/grafana/smtpgate.json is valid JSON, and every metric it queries exists in a real scrape."""
from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.fixtures.server import SERVER_HEAD, listeners, run_server
from tests.fixtures.auth_session import plain_ir
from tests.smtpclient import Raw

DASHBOARD = Path(__file__).resolve().parents[2] / "contrib" / "grafana" / "smtpgate.json"
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def expressions(node) -> list[str]:
    if isinstance(node, dict):
        out = [node["expr"]] if isinstance(node.get("expr"), str) else []
        if isinstance(node.get("query"), dict) and isinstance(node["query"].get("query"), str):
            out.append(node["query"]["query"])
        return out + [e for v in node.values() for e in expressions(v)]
    if isinstance(node, list):
        return [e for v in node for e in expressions(v)]
    return []


def test_every_dashboard_metric_exists_in_a_scrape(tmp_path):
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "smtpgate" and dashboard["panels"]
    exprs = expressions(dashboard)
    queried = {name for e in exprs for name in re.findall(r"\bsmtpgate_[a-z0-9_]+", e)}
    assert len(queried) >= 15, queried

    config = SERVER_HEAD + listeners("submission") + """
[server.listener.mgmt]
bind = "127.0.0.1:0"
protocol = "http"
[session.auth]
lookup = "list/users"
allow-plain-text = true
[list]
users = ["john@example.org:pw"]
"""
    with run_server(config, tmp_path / "srv") as srv:
        c = Raw(srv.port("submission"))
        assert c.cmd("EHLO client.test").startswith("250-")
        assert c.cmd(f"AUTH PLAIN {plain_ir('john@example.org', 'pw')}").startswith("235 ")
        c.close()
        text = httpx.get(f"http://127.0.0.1:{srv.port('mgmt')}/metrics", timeout=10).text
    exposed = set()
    for family in text_string_to_metric_families(text):
        # Families without samples yet (no ban so far) are still announced with # HELP / # TYPE.
        for suffix in SUFFIXES.get(family.type, ("",)):
            exposed.add(family.name + suffix)
    missing = sorted(queried - exposed)
    assert not missing, f"dashboard queries metrics that /metrics does not expose: {missing}"
    # Panels are laid out on Grafana's 24-column grid without overlapping.
    cells = set()
    for panel in dashboard["panels"]:
        g = panel["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, panel["title"]
                cells.add((x, y))
