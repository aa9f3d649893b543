"""Internet off (a Kaggle submission): installed as ``sitecustomize`` of a stand-in
session, it makes every connection to a non-loopback address and every DNS lookup of a
non-local name fail with ``OSError`` naming the host. Loopback stays open: Jupyter's
kernels talk to papermill over 127.0.0.1."""

from __future__ import annotations

import errno
import ipaddress
import socket

_LOCAL_NAMES = {"", "localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}
_connect, _connect_ex = socket.socket.connect, socket.socket.connect_ex
_getaddrinfo, _gethostbyname, _gethostbyname_ex = socket.getaddrinfo, socket.gethostbyname, socket.gethostbyname_ex


def _is_local(host: object) -> bool:
    if host is None:
        return True
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    host = str(host).split("%")[0].strip("[]")
    if host.lower() in _LOCAL_NAMES:
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_unspecified


def _is_lookup(host: object) -> bool:
    """True when resolving ``host`` needs DNS (a name that is not local; an address is not)."""
    if _is_local(host):
        return False
    try:
        ipaddress.ip_address(str(host.decode() if isinstance(host, bytes) else host).split("%")[0].strip("[]"))
    except ValueError:
        return True
    return False


def _refuse(host: object, port: object = None) -> OSError:
    where = f"{host}:{port}" if port is not None else f"{host}"
    return OSError(errno.ENETUNREACH, f"network cut off (internet off): connection to {where} refused")


def _checked(address: object, sock: socket.socket) -> None:
    if sock.family in (socket.AF_INET, socket.AF_INET6) and isinstance(address, tuple) and not _is_local(address[0]):
        raise _refuse(address[0], address[1])


def connect(self: socket.socket, address: object) -> None:
    _checked(address, self)
    return _connect(self, address)


def connect_ex(self: socket.socket, address: object) -> int:
    _checked(address, self)
    return _connect_ex(self, address)


def getaddrinfo(host: object, *args: object, **kwargs: object) -> list:
    if _is_lookup(host):
        raise socket.gaierror(socket.EAI_NONAME, f"network cut off (internet off): lookup of {host!r} refused")
    return _getaddrinfo(host, *args, **kwargs)


def gethostbyname(host: str) -> str:
    if _is_lookup(host):
        raise socket.gaierror(socket.EAI_NONAME, f"network cut off (internet off): lookup of {host!r} refused")
    return _gethostbyname(host)


def gethostbyname_ex(host: str) -> tuple:
    if _is_lookup(host):
        raise socket.gaierror(socket.EAI_NONAME, f"network cut off (internet off): lookup of {host!r} refused")
    return _gethostbyname_ex(host)


socket.socket.connect = connect
socket.socket.connect_ex = connect_ex
socket.getaddrinfo = getaddrinfo
socket.gethostbyname = gethostbyname
socket.gethostbyname_ex = gethostbyname_ex
