"""The bounded thread pool for CPU-heavy work: password hashing, SCRAM key derivation.

A server resource, not a lookup's: the session asks for it with a ``Compute`` request, lookups verify
hashes through :func:`run_sync`, and the server sizes it. One pool for all, so hashing under attack is
bounded by ``os.cpu_count()`` threads whatever asks for it, and the event loop never hashes.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
from typing import Any, Callable, TypeVar

T = TypeVar("T")


_executor: concurrent.futures.ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()
_workers: int = os.cpu_count() or 1


def configure_executor(workers: int | None = None) -> None:
    """Set the number of hashing threads (default ``os.cpu_count()``). Replaces the pool; jobs already
    running on the old pool finish there."""
    global _executor, _workers
    if workers is not None and workers < 1:
        raise ValueError("workers must be >= 1")
    with _executor_lock:
        old, _executor = _executor, None
        _workers = workers or (os.cpu_count() or 1)
    if old is not None:
        old.shutdown(wait=False)


def _get_executor() -> concurrent.futures.ThreadPoolExecutor:
    global _executor
    ex = _executor
    if ex is None:
        with _executor_lock:
            if _executor is None:
                _executor = concurrent.futures.ThreadPoolExecutor(
                    max_workers=_workers, thread_name_prefix="smtpgate-hash")
            ex = _executor
    return ex


async def run_sync(fn: Callable[..., T], *args: Any) -> T:
    """Run a CPU-bound callable (hashing, key derivation) on the shared bounded pool."""
    return await asyncio.get_running_loop().run_in_executor(_get_executor(), fn, *args)
