"""ZeroMQ CURVE for every loopline socket that leaves the machine: keys, allow-lists, failures.

One key reader (:func:`load_curve_key`) serves the daemon's source and publisher, the
simulator and the viewers. A key is given as itself (40 Z85 characters) or as a file: a bare
key, or a certificate written by ``zmq.auth.create_certificates`` (``NAME.key`` holds the
public key, ``NAME.key_secret`` both). Asked for a secret key, the reader returns the secret
one or fails; it never hands a public key to a server that needs its secret.

Roles:

- a *server* (binds, or is the publisher) has a secret key; :func:`apply_curve` with
  ``server=True`` derives its public key. With an allow-list (:func:`load_allowed_keys`:
  ``publish.curve_clients``, ``source.curve_clients``) a :class:`ClientAllowList` answers
  ZeroMQ's authentication requests (ZAP, through pyzmq's ``ThreadAuthenticator``) and only
  the listed client public keys may connect; without one, any client that knows the server's
  public key may.
- a *client* (connects) knows the server's public key and has its own pair (an ephemeral one
  when none is given; a listed one when the server keeps an allow-list).

A failed handshake (a plain peer, a wrong key, a client not on the list) closes that
connection; libzmq then gives the connecting side up for good. Connecting sockets watch for
:data:`HANDSHAKE_FAILED` on their monitor and connect again after a back-off
(:mod:`loopline.daemon.ingest._zmq`).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import zmq

logger = logging.getLogger(__name__)

__all__ = [
    "HANDSHAKE_FAILED",
    "ClientAllowList",
    "apply_curve",
    "load_allowed_keys",
    "load_curve_key",
]

#: Monitor events of a failed handshake (mechanism mismatch, wrong key, refused by ZAP).
HANDSHAKE_FAILED = (
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)

_Z85 = frozenset("0123456789abcdefghijklmnopqrstuvwxyz"
                 "ABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#")
_WARN_EVERY_S = 5.0


def _is_z85(text: str) -> bool:
    return len(text) == 40 and all(c in _Z85 for c in text)


def load_curve_key(key: str | bytes | os.PathLike | None, *, secret: bool) -> bytes | None:
    """A Z85 CURVE key given as itself or as a file holding it; None for "" or None.

    Parameters
    ----------
    key
        40 Z85 characters, or the path of a bare key file or of a ``zmq.auth`` certificate.
    secret
        Whether the secret key is wanted (a server's, or a client's own); else the public.

    Raises
    ------
    ValueError
        Not a key and no such file; a file holding neither a key nor a certificate; a
        certificate without the key asked for (a ``.key`` file asked for a secret key).
    """
    if key is None or key in ("", b""):
        return None
    if isinstance(key, bytes):
        key = key.decode("ascii", "replace")
    key = os.fspath(key)
    if _is_z85(key) and not os.path.exists(key):
        return key.encode("ascii")
    path = Path(key)
    what = "secret" if secret else "public"
    if not path.is_file():
        raise ValueError(f"CURVE key: expected a 40-character Z85 key or a key file, got {key!r}")
    text = path.read_text("utf-8", errors="replace")
    if "curve" in text and ("public-key" in text or "secret-key" in text):
        import zmq.auth

        try:
            public, secret_key = zmq.auth.load_certificate(path)
        except (ValueError, OSError) as e:
            raise ValueError(f"CURVE key: {path} is not a readable zmq.auth certificate: "
                             f"{e}") from None  # fmt: skip
        out = secret_key if secret else public
        if out is None:
            raise ValueError(f"CURVE key: expected a {what} key in {path}, got a certificate "
                             "with the public key only (give NAME.key_secret)")  # fmt: skip
        return out
    z85 = text.strip()
    if not _is_z85(z85):
        raise ValueError(f"CURVE key: expected 40 Z85 characters in {path}, got {len(z85)}")
    return z85.encode("ascii")


def load_allowed_keys(where: str | os.PathLike | None) -> frozenset[bytes] | None:
    """The client public keys of an allow-list; None for "" or None (no list).

    ``where`` is a folder of ``zmq.auth`` public certificates (every ``*.key`` file in it, as
    ``zmq.auth`` keeps them), or one file: a certificate, or Z85 keys one per line (``#``
    starts a comment). An empty list is an error: it would refuse every client.
    """
    if where is None or os.fspath(where) == "":
        return None
    path = Path(where)
    keys: set[bytes] = set()
    if path.is_dir():
        for f in sorted(path.glob("*.key")):
            k = load_curve_key(f, secret=False)
            if k is not None:
                keys.add(k)
    elif path.is_file():
        text = path.read_text("utf-8", errors="replace")
        if "curve" in text and "public-key" in text:
            keys.add(load_curve_key(path, secret=False) or b"")
        else:
            for n, line in enumerate(text.splitlines(), 1):
                # Z85 has "#" in its alphabet: a key is the line's first word; a line whose
                # first word is not a key and starts with "#" is a comment.
                words = line.split()
                if not words or (words[0].startswith("#") and not _is_z85(words[0])):
                    continue
                line = words[0]
                if not _is_z85(line):
                    raise ValueError(f"CURVE allow-list {path}, line {n}: expected a "
                                     f"40-character Z85 public key, got {line[:50]!r}")  # fmt: skip
                keys.add(line.encode("ascii"))
    else:
        raise ValueError(f"CURVE allow-list: expected a folder of *.key certificates or a key "
                         f"file, got {os.fspath(where)!r}")  # fmt: skip
    keys.discard(b"")
    if not keys:
        raise ValueError(f"CURVE allow-list: expected at least one client public key in "
                         f"{os.fspath(where)!r}, got none")  # fmt: skip
    return frozenset(keys)


def apply_curve(sock: zmq.Socket, *, server: bool, server_key: bytes | None = None,
                secret_key: bytes | None = None) -> bool:  # fmt: skip
    """Set a socket's CURVE options before it binds or connects; returns whether CURVE is on.

    ``server=True``: ``secret_key`` is the server's and turns CURVE on. ``server=False``:
    ``server_key`` (the server's public key) turns it on; ``secret_key`` is our own (an
    ephemeral pair is made without one).
    """
    if server:
        if secret_key is None:
            return False
        sock.curve_secretkey = secret_key
        sock.curve_publickey = zmq.curve_public(secret_key)
        sock.curve_server = True
        return True
    if server_key is None:
        return False
    if secret_key is None:
        public, secret_key = zmq.curve_keypair()
    else:
        public = zmq.curve_public(secret_key)
    sock.curve_serverkey = server_key
    sock.curve_publickey = public
    sock.curve_secretkey = secret_key
    return True


class ClientAllowList:
    """Only the listed client public keys pass a CURVE server's handshake (ZAP).

    Runs pyzmq's ``ThreadAuthenticator`` on ``ctx`` (one per context; it answers for every
    CURVE server socket of that context). Start it before the server socket binds, and
    :meth:`stop` it before the context is terminated. ``refused`` counts the handshakes it
    refused.
    """

    def __init__(self, ctx: zmq.Context, keys: frozenset[bytes], *, name: str = "") -> None:
        from zmq.auth.thread import ThreadAuthenticator

        self.keys = keys
        self.name = name
        self.refused = 0
        self._warned = -_WARN_EVERY_S
        self._auth = ThreadAuthenticator(ctx, log=logging.getLogger(f"{__name__}.zap"))
        self._auth.start()
        self._auth.configure_curve_callback(domain="*", credentials_provider=self)

    def callback(self, domain: str, key: bytes) -> bool:
        """ZAP: ``key`` is the client's public key (Z85)."""
        if key in self.keys:
            return True
        self.refused += 1
        now = time.monotonic()
        level = logging.WARNING if now - self._warned > _WARN_EVERY_S else logging.DEBUG
        if level == logging.WARNING:
            self._warned = now
        logger.log(level, "%s: CURVE client %s refused (expected a key of the allow-list; "
                   "%d refused so far)", self.name or "ZAP", key.decode("ascii", "replace"),
                   self.refused)  # fmt: skip
        return False

    def stop(self) -> None:
        self._auth.stop()
