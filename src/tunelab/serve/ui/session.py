"""Signing in to the web UI: the API key typed once, then a cookie the browser sends with every page and API
call. The cookie is an HMAC of the key under a secret kept in the data directory, so it is useless on another
server, stops working when its key is removed, and the key itself is never stored in the browser."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

COOKIE = "tunelab_session"
# The UI's API calls carry this header: a page on another site can make the browser send the cookie, but not a
# custom header (that needs a CORS preflight, which this server never grants), so cookies alone authorise nothing.
UI_HEADER = "x-tunelab-ui"


def load_secret(data_dir: Path) -> bytes:
    """The server's signing secret, made on first use and kept readable by its owner only."""
    path = data_dir / "ui-secret"
    if not path.is_file():
        data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path.with_suffix(".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
        os.replace(path.with_suffix(".tmp"), path)
    return bytes.fromhex(path.read_text().strip())


class Sessions:
    """key -> cookie, and cookie -> the key's project, in constant time."""

    def __init__(self, keys: dict[str, str], secret: bytes) -> None:
        self.secret = secret
        self.tokens = [(self.token(k).encode(), project) for k, project in keys.items()]

    def token(self, key: str) -> str:
        return hmac.new(self.secret, key.encode(), hashlib.sha256).hexdigest()

    def project(self, cookie: str | None) -> str | None:
        if not cookie:
            return None
        given = cookie.encode()
        matches = [project for t, project in self.tokens if hmac.compare_digest(given, t)]
        return matches[0] if matches else None
