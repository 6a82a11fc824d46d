"""logsink.BatchingHandler: startup records held back, then written or (after a failed start) dropped
below a level; its writer thread never keeps a process alive."""
import io
import logging
import time

from smtpgate.logsink import BatchingHandler


def _record(level: int, msg: str) -> logging.LogRecord:
    return logging.LogRecord("smtpgate.test", level, __file__, 1, msg, None, None)


def _settle(handler: BatchingHandler) -> None:
    time.sleep(handler.interval * 5)


def test_paused_records_are_written_on_resume():
    out = io.StringIO()
    h = BatchingHandler(out, interval=0.01)
    h.pause()
    h.emit(_record(logging.INFO, "listener up"))
    _settle(h)
    assert out.getvalue() == ""
    h.resume()
    _settle(h)
    assert "INFO smtpgate.test: listener up" in out.getvalue()
    h.close()


def test_failed_start_keeps_only_warnings():
    out = io.StringIO()
    h = BatchingHandler(out, interval=0.01)
    h.pause()
    h.emit(_record(logging.INFO, "listener smtp on 127.0.0.1:2525"))
    h.emit(_record(logging.WARNING, "directory/users unavailable"))
    h.resume(drop_below=logging.WARNING)
    h.close()
    assert "listener smtp" not in out.getvalue()
    assert "WARNING smtpgate.test: directory/users unavailable" in out.getvalue()


def test_writer_is_a_daemon_thread():
    import threading
    before = set(threading.enumerate())
    h = BatchingHandler(io.StringIO())
    started = [t for t in threading.enumerate() if t not in before]
    assert [t.name for t in started] == ["smtpgate-log"] and started[0].daemon
    h.close()
