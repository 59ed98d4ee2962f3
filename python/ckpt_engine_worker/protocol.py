"""The worker wire protocol: frames (4-byte little-endian length + UTF-8 JSON) over a Unix socket.

The worker is handed a ticket, "address#session": it connects to the address, checks that the
listening process runs as its own user (SO_PEERCRED), and sends {"session": ...} first. Then messages
from the parameter server: attach, load, release, finish, abort; every one gets one reply,
{"ok": true} or {"ok": false, "error": "..."}. Mirrors the C# WorkerFraming, WorkerTicket and WorkerSockets.
"""

import json
import os
import re
import socket
import struct
import time

MAX_FRAME = 64 << 20
SESSION_LENGTH = 64
SOCKET_DIR_VARIABLE = "CKPT_ENGINE_SOCKET_DIR"
MESSAGE_TYPES = ("attach", "load", "release", "finish", "abort")

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_SESSION = re.compile(r"[0-9A-Fa-f]{%d}" % SESSION_LENGTH)


class ProtocolError(Exception):
    """A frame or message that breaks the protocol; the text says what and where."""


class PeerClosed(Exception):
    """The peer closed the connection or went silent; the text says when."""


def address_for(device_id):
    """The parameter server's socket address for a device id: "@ckpt-engine-<id>" (abstract), or a
    file under $CKPT_ENGINE_SOCKET_DIR when that is set."""
    name = "ckpt-engine-" + _UNSAFE.sub("_", device_id)
    directory = os.environ.get(SOCKET_DIR_VARIABLE)
    return os.path.join(directory, name + ".sock") if directory else "@" + name


def parse_ticket(ticket):
    """(address, session) from a worker ticket "address#session" (the session is 64 hex digits). The
    ValueError says what is wrong without echoing the session key."""
    if not isinstance(ticket, str) or not ticket:
        raise ValueError("the worker ticket is empty")
    address, cut, session = ticket.rpartition("#")
    if not cut or not address:
        raise ValueError("'%s' is a bare socket address, not a worker ticket (\"address#session\"): workers take the "
                         "ticket the parameter server posts with each update" % ticket)
    if not _SESSION.fullmatch(session):
        raise ValueError("the worker ticket for %s has a malformed session key (expected %d hex digits)" % (address, SESSION_LENGTH))
    return address, session.lower()


def peer_refusal(sock, who):
    """None when the peer of a Unix socket runs as this process's user (SO_PEERCRED), else why it is refused."""
    pid, uid, _ = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    me = os.geteuid()
    if uid == me:
        return None
    return "%s (pid %d) runs as uid %d, not as this process's uid %d: refused" % (who, pid, uid & 0xFFFFFFFF, me)


def endpoint(address):
    """The address as Python's AF_UNIX sockets take it ("@name" is in the abstract namespace)."""
    return "\0" + address[1:] if address.startswith("@") else address


def encode(message):
    """One whole frame, length prefix included."""
    data = json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    if len(data) > MAX_FRAME:
        raise ProtocolError("message of %d bytes is over the %d-byte frame limit" % (len(data), MAX_FRAME))
    return struct.pack("<i", len(data)) + data


def _recv_exactly(sock, count, deadline, what):
    buf = bytearray(count)
    view = memoryview(buf)
    got = 0
    while got < count:
        left = deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout("no %s within the deadline (%d of %d bytes)" % (what, got, count))
        sock.settimeout(left)
        n = sock.recv_into(view[got:], count - got)
        if n == 0:
            return bytes(buf[:got])
        got += n
    return bytes(buf)


def read_frame(sock, timeout):
    """Reads one frame's JSON bytes within `timeout` seconds; None when the peer closed the
    connection between frames. A closed connection inside a frame or a bad length is a ProtocolError
    (the stream is out of step: drop the connection); silence is socket.timeout."""
    deadline = time.monotonic() + timeout
    prefix = _recv_exactly(sock, 4, deadline, "frame length")
    if not prefix:
        return None
    if len(prefix) < 4:
        raise ProtocolError("connection closed inside a frame length (%d of 4 bytes)" % len(prefix))
    (length,) = struct.unpack("<i", prefix)
    if length < 2 or length > MAX_FRAME:
        raise ProtocolError("frame length %d is outside [2, %d]" % (length, MAX_FRAME))
    data = _recv_exactly(sock, length, deadline, "frame body")
    if len(data) < length:
        raise ProtocolError("connection closed inside a frame (%d of %d bytes)" % (len(data), length))
    return data


def decode(data):
    """Parses a frame into a message dict with a known "type"; ProtocolError says what is wrong."""
    try:
        message = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ProtocolError("frame of %d bytes is not valid JSON: %s" % (len(data), e)) from None
    if not isinstance(message, dict):
        raise ProtocolError("frame holds a JSON %s, not an object" % type(message).__name__)
    kind = message.get("type")
    if kind not in MESSAGE_TYPES:
        raise ProtocolError("message type %r is not one of %s" % (kind, ", ".join(MESSAGE_TYPES)))
    return message


def send(sock, message, timeout):
    """Writes one frame within `timeout` seconds."""
    sock.settimeout(timeout)
    sock.sendall(encode(message))


def connect(address, timeout):
    """Connects to the parameter server at `address`, retrying with a short backoff while nothing
    listens yet, for at most `timeout` seconds. Raises PeerClosed naming the address when it fails."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(max(0.001, deadline - time.monotonic()))
            sock.connect(endpoint(address))
            return sock
        except (FileNotFoundError, ConnectionRefusedError, BlockingIOError) as e:
            sock.close()
            error = e
        except socket.timeout:
            sock.close()
            raise PeerClosed("could not connect to the parameter server at %s within %g s" % (address, timeout)) from None
        except BaseException:
            sock.close()
            raise
        left = deadline - time.monotonic()
        if left <= 0:
            raise PeerClosed("no parameter server listening at %s within %g s (%s)" % (address, timeout, error.strerror or error))
        time.sleep(min(delay, left))
        delay = min(delay * 2, 0.2)
