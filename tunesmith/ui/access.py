"""Who may open the UI. It reads and writes files and starts training as the user who runs it, so it listens on
the loopback address unless told otherwise, and a wider address needs an access token, asked for at login."""

from __future__ import annotations

import hmac
import ipaddress
import os

from ..errors import ConfigError

TOKEN_ENV = "TUNESMITH_UI_TOKEN"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def access_token(host: str, token: str | None) -> str | None:
    """The token the UI requires (`token`, else $TUNESMITH_UI_TOKEN), or None on a loopback address without one.
    Any other address without a token is refused: anyone who can reach the port could train and read files."""
    token = token or os.environ.get(TOKEN_ENV) or None
    if token is not None and not token.strip():
        raise ConfigError("the access token is empty", where="--token")
    if token is None and not is_loopback(host):
        raise ConfigError(f"--host {host} opens the UI beyond this machine, and it needs an access token for that",
                          where="--host", hint=f"pass --token SECRET (or set {TOKEN_ENV}); the login page then asks "
                                               f"for it as the password")
    return token


def password_check(token: str):
    """Gradio's `auth`: any user name, the token as the password (compared in constant time)."""
    def check(user: str, password: str) -> bool:
        return hmac.compare_digest(password.encode(), token.encode())

    return check
