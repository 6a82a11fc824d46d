"""LDAP password lookup: bind as the user (DN template) or search for the entry, then bind as it.

Configured as ``[directory."<id>"] type = "ldap"`` (validated in ``config/directory.py``):

* ``url`` -- ``ldap://host[:port]`` or ``ldaps://host[:port]`` (required);
* ``tls.starttls``, ``tls.allow-invalid-certs``, ``tls.ca-file``;
* either ``bind.dn-template`` (e.g. ``uid={local},ou=people,dc=example,dc=org``) or ``search.base-dn`` +
  ``search.filter`` (e.g. ``(|(uid={user})(mail={user}))``) with an optional service account
  ``search.bind-dn`` / ``search.bind-secret`` (anonymous search when absent);
* ``attributes.address`` (default ``["mail"]``) and ``attributes.name`` (canonical account name; default:
  the login as given).

Placeholders: ``{user}`` the login, ``{local}`` the part before the last ``@``, ``{domain}`` the part
after it. Values are escaped for where they land: RFC 4514 in a DN, RFC 4515 in a filter, so a login such
as ``*)(uid=*`` matches nothing.

Why ldap3: it is pure Python; every maintained asyncio LDAP client needs compiling against libldap.
ldap3 is synchronous, so each authentication runs in this lookup's own thread pool of ``concurrency``
workers, bounded by ``timeout`` on the asyncio side and by ldap3's connect/receive timeouts on the socket
side (a worker gives up between steps once the deadline has passed, so a hung server cannot hold a
worker much longer than the caller waits).

Empty passwords are refused before any LDAP traffic: a simple bind with a DN and an empty password is an
"unauthenticated bind" that servers answer with success (RFC 4513 §5.1.2), a classic auth bypass.
"""
from __future__ import annotations

import asyncio
import logging
import math
import ssl
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ldap3 import AUTO_BIND_NONE, BASE, IP_SYSTEM_DEFAULT, NONE, SIMPLE, SUBTREE, Connection, Server, Tls
from ldap3.core.exceptions import LDAPException
from ldap3.utils.conv import escape_filter_chars
from ldap3.utils.dn import escape_rdn

from ..config.directory import LdapSettings
from ..config.model import DirectorySettings, TlsClientSettings
from ..net.tls import client_context
from .base import INVALID, AuthResult, Capability, Credentials, Lookup, Outcome, unavailable

log = logging.getLogger("smtpgate.lookup.ldap")

# Result codes that are the server's verdict on these credentials or this entry (the server is up and
# answered): constraintViolation (locked by a password policy), noSuchObject, invalidDNSyntax,
# inappropriateAuthentication, invalidCredentials, insufficientAccessRights, unwillingToPerform (account
# disabled on some servers). Anything else (busy, unavailable, other, ...) is the store's trouble.
_CREDENTIAL_CODES = frozenset({19, 32, 34, 48, 49, 50, 53})
_SIZE_LIMIT_EXCEEDED = 4


class _Deadline(Exception):
    """The caller's timeout passed while a worker was between two LDAP operations."""


class _VerifyingTls(Tls):
    """ldap3's TLS with the standard library doing certificate *and* host name verification.

    ldap3 switches ``check_hostname`` off and checks names itself with ``ssl.match_hostname``, which
    Python 3.12 removed; its fallback rejects IP addresses. Verifying in the handshake instead works for
    names and addresses alike, for ldaps:// and StartTLS.
    """

    def __init__(self, context: ssl.SSLContext, server_hostname: str):
        super().__init__(validate=context.verify_mode)
        self._context = context
        self._server_hostname = server_hostname

    def wrap_socket(self, connection: Any, do_handshake: bool = False) -> None:
        hostname = self._server_hostname if self._context.check_hostname else None
        connection.socket = self._context.wrap_socket(connection.socket, server_side=False,
                                                      do_handshake_on_connect=do_handshake,
                                                      server_hostname=hostname)


def _split_login(login: str) -> dict[str, str]:
    local, at, domain = login.rpartition("@")
    if not at:
        local, domain = login, ""
    return {"{user}": login, "{local}": local, "{domain}": domain}


def _fill(template: str, values: dict[str, str], escape: Any) -> str | None:
    """Substitute placeholders (escaped); None when a placeholder used by the template is empty."""
    out = template
    for name, value in values.items():
        if name in out:
            if not value:
                return None
            out = out.replace(name, escape(value))
    return out


class LdapLookup(Lookup):
    capabilities = Capability.PASSWORD

    def __init__(self, settings: DirectorySettings):
        """``settings.options`` is a validated :class:`~smtpgate.config.directory.LdapSettings`."""
        opts: LdapSettings = settings.options
        self.name = f"directory/{settings.id}"
        self._timeout = float(settings.timeout)
        # ldap3 packs the receive timeout into SO_RCVTIMEO as whole seconds; the asyncio side still
        # answers the caller on the exact timeout.
        self._socket_timeout = max(1, math.ceil(self._timeout))
        self._starttls = opts.starttls
        tls = None
        if opts.use_ssl or opts.starttls:
            context = client_context(TlsClientSettings(allow_invalid_certs=opts.allow_invalid_certs,
                                                       ca_file=opts.ca_file))
            tls = _VerifyingTls(context, opts.host)
        # No schema/root DSE reads (extra round trips for nothing); no referral chasing to other hosts.
        # IP_SYSTEM_DEFAULT: ldap3's default mode remembers a refused address as "unavailable" for a
        # while, so logins kept failing (454) for seconds after the server came back.
        self._server = Server(opts.host, port=opts.port, use_ssl=opts.use_ssl, tls=tls, get_info=NONE,
                              connect_timeout=self._timeout, allowed_referral_hosts=[], mode=IP_SYSTEM_DEFAULT)
        self._dn_template = opts.dn_template
        self._base_dn = opts.base_dn
        self._filter = opts.filter
        self._service_dn = opts.service_dn
        self._service_secret = opts.service_secret
        self._address_attrs = list(opts.address_attributes)
        self._name_attr = opts.name_attribute
        self._attrs = sorted(set(self._address_attrs) | ({self._name_attr} if self._name_attr else set()))

        self._executor = ThreadPoolExecutor(max_workers=max(1, int(settings.concurrency)),
                                            thread_name_prefix=f"ldap-{settings.id}")

    # ------------------------------------------------------------------ async side

    async def authenticate(self, creds: Credentials) -> AuthResult:
        if creds.kind != "password":
            return AuthResult(Outcome.INVALID, reason="ldap verifies passwords only")
        login, password = creds.username, creds.secret
        if not password:
            return AuthResult(Outcome.INVALID, reason="empty password refused (unauthenticated bind)")
        # No legitimate login has control characters; refusing them keeps DN escaping simple.
        if not login or any(ord(c) < 0x20 or ord(c) == 0x7F for c in login):
            return INVALID
        deadline = time.monotonic() + self._timeout
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._timeout):
                return await loop.run_in_executor(self._executor, self._authenticate_sync, login, password,
                                                  deadline)
        except TimeoutError:
            return unavailable(f"ldap: no answer within {self._timeout:g}s")
        except RuntimeError as exc:   # executor shut down by close()
            return unavailable(f"ldap: {exc}")

    async def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ worker thread

    def _authenticate_sync(self, login: str, password: str, deadline: float) -> AuthResult:
        if time.monotonic() >= deadline:   # waited in the queue for longer than the caller will wait
            return unavailable("ldap: timed out waiting for a worker")
        conn = Connection(self._server, authentication=SIMPLE, auto_bind=AUTO_BIND_NONE, raise_exceptions=False,
                          receive_timeout=self._socket_timeout, read_only=True, auto_referrals=False,
                          check_names=False)
        try:
            conn.open()
            if self._starttls:
                self._check(deadline)
                conn.start_tls()
            if self._dn_template:
                return self._bind_template(conn, login, password, deadline)
            return self._search_then_bind(conn, login, password, deadline)
        except _Deadline:
            return unavailable("ldap: timed out")
        except LDAPException as exc:
            return unavailable(f"ldap: {type(exc).__name__}: {str(exc)[:200]}")
        except OSError as exc:
            return unavailable(f"ldap: {type(exc).__name__}: {exc.strerror or exc}")
        finally:
            try:
                conn.unbind()
            except Exception:   # the socket may already be gone; nothing left to release
                pass

    @staticmethod
    def _check(deadline: float) -> None:
        if time.monotonic() >= deadline:
            raise _Deadline

    def _bind_template(self, conn: Connection, login: str, password: str, deadline: float) -> AuthResult:
        assert self._dn_template is not None
        dn = _fill(self._dn_template, _split_login(login), escape_rdn)
        if dn is None:
            return AuthResult(Outcome.INVALID, reason="login lacks a part the DN template needs")
        verdict = self._bind(conn, dn, password, deadline)
        if verdict is not None:
            return verdict
        # Read our own entry as the user; if the ACLs hide it the login still stands, without addresses.
        self._check(deadline)
        conn.search(dn, "(objectClass=*)", BASE, attributes=self._attrs or ["1.1"], size_limit=1)
        entries = self._entries(conn)
        return self._valid(login, entries[0] if len(entries) == 1 else {})

    def _search_then_bind(self, conn: Connection, login: str, password: str, deadline: float) -> AuthResult:
        assert self._filter is not None and self._base_dn is not None
        search_filter = _fill(self._filter, _split_login(login), escape_filter_chars)
        if search_filter is None:
            return AuthResult(Outcome.INVALID, reason="login lacks a part the search filter needs")
        if self._service_dn:
            self._check(deadline)
            if not conn.rebind(user=self._service_dn, password=self._service_secret):
                return unavailable(f"ldap: service account bind failed: {conn.result.get('description')}")
        self._check(deadline)
        # size_limit=2 is enough to tell "exactly one" from "ambiguous" without reading a whole subtree.
        conn.search(self._base_dn, search_filter, SUBTREE, attributes=self._attrs or ["1.1"], size_limit=2)
        code = conn.result.get("result")
        if code not in (0, _SIZE_LIMIT_EXCEEDED):
            return unavailable(f"ldap: search failed: {conn.result.get('description')}")
        entries = self._entries(conn)
        if len(entries) != 1:
            if entries:
                log.warning("ldap %s: login %r matches %d+ entries; refusing", self.name, login, len(entries))
            return AuthResult(Outcome.INVALID, reason=f"search matched {len(entries)} entries")
        entry = entries[0]
        verdict = self._bind(conn, entry["dn"], password, deadline)
        return verdict if verdict is not None else self._valid(login, entry)

    def _bind(self, conn: Connection, dn: str, password: str, deadline: float) -> AuthResult | None:
        """None when the bind succeeded, else the verdict."""
        self._check(deadline)
        if conn.rebind(user=dn, password=password):
            return None
        code, desc = conn.result.get("result"), conn.result.get("description")
        if code in _CREDENTIAL_CODES:
            return AuthResult(Outcome.INVALID, reason=f"ldap bind: {desc}")
        return unavailable(f"ldap bind: {desc} ({code})")

    @staticmethod
    def _entries(conn: Connection) -> list[dict[str, Any]]:
        out = []
        for item in conn.response or ():
            if item.get("type") == "searchResEntry":
                attrs = {k.lower(): v for k, v in (item.get("raw_attributes") or {}).items()}
                out.append({"dn": item["dn"], "attrs": attrs})
        return out

    def _valid(self, login: str, entry: dict[str, Any]) -> AuthResult:
        attrs: dict[str, list[bytes]] = entry.get("attrs", {})
        addresses = set()
        for name in self._address_attrs:
            for raw in attrs.get(name, ()):
                value = raw.decode("utf-8", "replace").strip().lower()
                if "@" in value:
                    addresses.add(value)
        account = login
        if self._name_attr:
            values = attrs.get(self._name_attr) or []
            if values:
                account = values[0].decode("utf-8", "replace")
            else:
                log.debug("ldap %s: entry has no %s; using the login as account name", self.name,
                          self._name_attr)
        return AuthResult(Outcome.VALID, account=account, addresses=frozenset(addresses))
