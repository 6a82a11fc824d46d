"""Abuse resistance across sessions, processes and nodes (SPEC §2.3; README "Abuse resistance").

    store.py      the one small async interface for shared state: counters with expiry, marks, bans,
                  concurrency slots -- and ``drive``, which runs a never-suspending call synchronously
    memory.py     the default store: this process's memory, bans persisted in a file (banfile.py)
    redis.py      the shared store: Redis, atomic Lua updates, every key expiring, per-process fallback
    guard.py      the policy: throttles, auto-ban, login locks, the progressive AUTH wait
    requests.py   what the sans-IO session yields to ask the guard (like ``Authenticate``)
    scan.py       "this is not SMTP" detection of a connection's first bytes
    build.py      settings -> store + guard (what the server calls)

Arrows: ``session`` imports only ``requests``; ``server`` holds the :class:`~guard.Guard`; ``config``
knows nothing of this package.
"""
