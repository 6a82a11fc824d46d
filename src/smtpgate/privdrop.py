"""Drop root after binding (``server.run-as.*``): ports below 1024 need root or CAP_NET_BIND_SERVICE,
nothing after that does, so an attacker who found a hole in a session would own an unprivileged account
rather than the machine.

Order matters: supplementary groups, then the group, then the user (after ``setuid`` the others are no
longer allowed). glibc applies each change to every thread of the process, so the hash executor's
threads switch too. Afterwards regaining root must fail; that is checked, and a process that could
still regain it exits rather than serve.

The spool (``queue.path``) is smtpgate's own directory: when started as root it is handed to the run-as
account (owner of the directory tree) before the switch, so the server can still write accepted mail.
Other files the server writes later (an embedded SQLite user store) must be writable by that account:
the systemd unit's ``StateDirectory=`` does that for ``/var/lib/smtpgate``.
"""
from __future__ import annotations

import logging
import os

from .config.runas import RunAs

log = logging.getLogger("smtpgate")


class PrivDropError(OSError):
    pass


def drop(run_as: RunAs | None, own: list[str] = ()) -> bool:
    """Switch to ``run_as`` if running as root. Returns True when it switched. ``own``: directories to
    hand over (recursively) first."""
    if run_as is None:
        return False
    if os.geteuid() != 0:
        if os.geteuid() != run_as.uid:
            log.warning("server.run-as.user = %s ignored: not started as root (running as uid %d)",
                        run_as.user, os.geteuid())
        return False
    for top in own:
        _chown_tree(top, run_as.uid, run_as.gid)
    _import_runtime()
    try:
        os.setgroups(os.getgrouplist(run_as.user, run_as.gid))
        os.setgid(run_as.gid)
        os.setuid(run_as.uid)
    except OSError as exc:
        raise PrivDropError(f"cannot switch to user {run_as.user}: {exc.strerror}") from None
    try:
        os.setuid(0)
    except PermissionError:
        pass
    else:  # pragma: no cover - the kernel would have to be broken
        raise PrivDropError("root could be regained after dropping privileges")
    os.environ["HOME"] = run_as.home
    os.environ["USER"] = os.environ["LOGNAME"] = run_as.user
    log.info("running as user %s (uid %d), group %s (gid %d)", run_as.user, run_as.uid, run_as.group, run_as.gid)
    return True


def _import_runtime() -> None:
    """Import every runtime module while still root. After the switch the process may no longer read
    its own installation (a virtualenv or pyenv under /root is 0700), and the session stages, SASL
    mechanisms and delivery modules are partly imported on first use."""
    import importlib
    import pkgutil

    import smtpgate
    for info in pkgutil.walk_packages(smtpgate.__path__, "smtpgate."):
        if info.name.rsplit(".", 1)[-1].startswith("__"):
            continue
        try:
            importlib.import_module(info.name)
        except Exception:  # noqa: BLE001 - optional backends (ldap3, asyncpg, ...) may be absent
            pass
    for name in ("encodings.idna", "encodings.ascii", "encodings.latin_1", "encodings.utf_8"):
        try:
            importlib.import_module(name)
        except ImportError:
            pass


def _chown_tree(top: str, uid: int, gid: int) -> None:
    if not os.path.isdir(top):
        return
    for root, dirs, files in os.walk(top):
        for name in [root] + [os.path.join(root, n) for n in dirs + files]:
            try:
                st = os.lstat(name)
                if st.st_uid != uid or st.st_gid != gid:
                    os.lchown(name, uid, gid)
            except OSError as exc:
                log.warning("cannot hand %s to uid %d: %s", name, uid, exc.strerror)
