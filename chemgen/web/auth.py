"""Who is asking: the web app's users, their API tokens, the identity of a request, CSRF and rate limits.

Three modes (`WebSettings.auth`):

``none``
    one user, ``local``: the default for a server on 127.0.0.1 that only its own user reaches.
``token``
    API tokens made with ``chemgen users add NAME`` (printed once, stored as SHA-256 hashes in
    ``<home>/users.json``; ``chemgen users revoke NAME`` ends one). A client sends ``Authorization: Bearer TOKEN``;
    a browser signs in once at ``/login`` with its token, which is then kept in an HttpOnly, SameSite=Strict cookie.
``proxy``
    the identity a trusted reverse proxy puts in a header (``X-Forwarded-User`` by default), accepted only from the
    proxy's addresses (`WebSettings.trusted_proxies`).

Every form POST carries a CSRF token equal to the ``chemgen_csrf`` cookie the pages set (the double-submit
pattern): another site can make a browser send the cookie, not read it into the form. Requests authenticated by
a bearer token are not forms a browser sends by itself and need none. Each user may submit at most
`WebSettings.jobs_per_minute` jobs a minute (HTTP 429 beyond that).
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import json
import os
import re
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from chemgen.errors import ChemgenError, UsageError

MODES = ("none", "token", "proxy")
LOCAL_USER = "local"
USERS_FILE = "users.json"
TOKEN_COOKIE = "chemgen_token"
CSRF_COOKIE = "chemgen_csrf"
CSRF_FIELD = "csrf_token"
USER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")


class AuthError(ChemgenError, PermissionError):
    """No identity, or one the server does not accept."""


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def check_user_name(name: str) -> str:
    if not USER_NAME.fullmatch(name or ""):
        raise UsageError(f"user name {name!r}: letters, digits, '_', '.', '@' and '-', starting with a letter or digit")
    return name


class UserStore:
    """``<home>/users.json``: per user the SHA-256 of their token, when it was made and whether it was revoked."""

    def __init__(self, home: str | os.PathLike):
        self.path = Path(home) / USERS_FILE

    @contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            data = self.read()
            yield data
            temporary = self.path.with_name(f".{self.path.name}.tmp")
            with open(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as handle:
                json.dump(data, handle, indent=1)
            os.replace(temporary, self.path)

    def read(self) -> dict[str, Any]:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return {"users": {}}
        except ValueError as err:
            raise AuthError(f"{self.path}: not a users file ({err})") from None

    def add(self, name: str, replace: bool = False) -> str:
        """A new token for ``name`` (returned once; only its hash is kept). An active user keeps theirs unless
        ``replace``."""
        check_user_name(name)
        token = secrets.token_urlsafe(32)
        with self._locked() as data:
            current = data["users"].get(name)
            if current and not current.get("revoked") and not replace:
                raise UsageError(f"user {name!r} exists; revoke them first or replace their token (--replace)")
            data["users"][name] = {"token_sha256": _hash(token), "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                   "revoked": None}
        return token

    def revoke(self, name: str) -> None:
        with self._locked() as data:
            user = data["users"].get(name)
            if user is None or user.get("revoked"):
                raise UsageError(f"no active user {name!r}")
            user["revoked"] = time.strftime("%Y-%m-%dT%H:%M:%S")

    def users(self) -> dict[str, dict[str, Any]]:
        return self.read()["users"]

    def user_for(self, token: str | None) -> str | None:
        """The active user whose token this is, or None."""
        if not token:
            return None
        digest = _hash(token)
        found = None
        for name, user in self.users().items():   # every hash compared, in constant time each
            if hmac.compare_digest(user["token_sha256"], digest) and not user.get("revoked"):
                found = name
        return found


def _bearer(headers: Any) -> str | None:
    value = headers.get("authorization", "")
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def identify(request: Any, settings: Any, store: UserStore) -> tuple[str | None, bool]:
    """(the request's user or None, whether a bearer token said so)."""
    if settings.auth == "none":
        return LOCAL_USER, False
    if settings.auth == "proxy":
        client = request.client.host if request.client else ""
        if client not in settings.trusted_proxies:
            return None, False
        name = request.headers.get(settings.auth_header, "").strip()
        return (name if USER_NAME.fullmatch(name) else None), False
    token = _bearer(request.headers)
    if token is not None:
        return store.user_for(token), True
    return store.user_for(request.cookies.get(TOKEN_COOKIE)), False


def new_csrf_token() -> str:
    return secrets.token_urlsafe(24)


def csrf_ok(cookie: str | None, submitted: str | None) -> bool:
    return bool(cookie) and bool(submitted) and hmac.compare_digest(str(cookie), str(submitted))


class RateLimiter:
    """At most ``per_minute`` events per key in any 60 s (a sliding window kept in memory)."""

    def __init__(self, per_minute: int):
        self.per_minute = per_minute
        self._events: dict[str, collections.deque] = collections.defaultdict(collections.deque)
        self._lock = threading.Lock()

    def allow(self, key: str, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        with self._lock:
            events = self._events[key]
            while events and now - events[0] >= 60.0:
                events.popleft()
            if len(events) >= self.per_minute:
                return False
            events.append(now)
            return True
