"""Observability at the edges: metrics, MTA-grade log lines, the management HTTP listener.

  events.py      the one place sessions report to (log lines + metric updates)
  metrics.py     the metric families and their Prometheus exposition
  observer.py    per-server wiring: metrics (always counted), lookup timings, the http listeners
  management.py  /metrics, /healthz, /readyz and the JSON API (aiohttp on the server's loop)
  health.py      readiness probes;  bans.py  the API's adapter over the ban store
  logsetup.py    server.log.format / .output / .level: text or JSON, stderr or syslog
"""
