"""``server.run-as.user`` / ``server.run-as.group`` (Stalwart's keys): the account smtpgate switches to
after it has bound its listeners, when started as root. Names are resolved here, at load time, so a
typo is a configuration error at startup (and in ``check-config``) rather than a failure after binding.
The switch itself is :mod:`smtpgate.privdrop`.
"""
from __future__ import annotations

import grp
import pwd
from dataclasses import dataclass
from typing import Any

from . import values
from .errors import ConfigError


@dataclass(frozen=True, slots=True)
class RunAs:
    user: str                # server.run-as.user
    uid: int
    group: str               # server.run-as.group (default: the user's primary group)
    gid: int
    home: str


def parse(builder: Any) -> RunAs | None:
    """Takes the keys from the loader's ``_Builder``; None when ``server.run-as.user`` is not set."""
    user_key, group_key = "server.run-as.user", "server.run-as.group"
    user = builder.take(user_key)
    group = builder.take(group_key)
    builder.take("server.run-as")            # an empty [server.run-as] table is harmless
    if user is None:
        if group is not None:
            raise ConfigError(group_key, "needs server.run-as.user as well")
        return None
    user = values.nonempty_string(user_key, user)
    try:
        pw = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except (KeyError, OverflowError):
        raise ConfigError(user_key, f"no such user {user!r} on this system") from None
    if pw.pw_uid == 0:
        raise ConfigError(user_key, "must name an unprivileged user, not root")
    gid = pw.pw_gid
    if group is not None:
        group = values.nonempty_string(group_key, group)
        try:
            gr = grp.getgrgid(int(group)) if group.isdigit() else grp.getgrnam(group)
        except (KeyError, OverflowError):
            raise ConfigError(group_key, f"no such group {group!r} on this system") from None
        gid = gr.gr_gid
    try:
        group_name = grp.getgrgid(gid).gr_name
    except KeyError:
        group_name = str(gid)
    return RunAs(user=pw.pw_name, uid=pw.pw_uid, group=group_name, gid=gid, home=pw.pw_dir)
