"""Who may connect to `hsa serve`: the API key checked at the handshake (openpi's newer
client sends "Authorization: Api-Key <key>"), the connection cap, the loopback-only
default bind, and TLS from a certificate and key file."""

from __future__ import annotations

import hmac
import ipaddress
import ssl
from http import HTTPStatus
from pathlib import Path

from ..errors import UserError


def admit(api_key: str | None, open_connections: set, max_connections: int):
    """websockets' process_request hook: refuse the handshake without the API key, or when
    the server already holds `max_connections`."""
    expected = f"Api-Key {api_key}" if api_key else None

    def process_request(connection, request):
        if expected is not None:
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), expected.encode()):
                return connection.respond(HTTPStatus.UNAUTHORIZED, "hsa serve: missing or wrong API key\n")
        if len(open_connections) >= max_connections:
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE,
                                      f"hsa serve: {max_connections} connections open, the most it takes\n")
        return None
    return process_request


def is_loopback(host: str) -> bool:
    """True for addresses only this machine reaches (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def check_bind(host: str, api_key: str | None, insecure: bool) -> None:
    """Beyond the loopback without a key anyone on the network drives the robot's policy:
    refused unless the caller says it is on purpose (`--insecure`)."""
    if not is_loopback(host) and not api_key and not insecure:
        raise UserError(f"binding {host} without an API key lets anyone on that network query the policy: set "
                        "--api-key (or HSA_API_KEY), or pass --insecure if the network is yours alone")


def tls_context(cert: str | Path | None, key: str | Path | None) -> ssl.SSLContext | None:
    """A server TLS context from a PEM certificate (chain) and its private key, or None."""
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise UserError("TLS needs both --tls-cert and --tls-key (PEM files)")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as e:
        raise UserError(f"{cert} / {key}: not a PEM certificate and its key ({e})") from None
    return context
