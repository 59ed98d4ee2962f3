"""Test doubles: a parameter server that speaks the worker protocol over a real socket and a real
/dev/shm segment, and helpers to make tensors of every dtype this torch has."""

import itertools
import json
import mmap
import os
import socket
import threading

import torch

from ckpt_engine_worker import dtypes, protocol
from ckpt_engine_worker.segments import HOST_MAPPINGS, tensor_crc32, tensor_sha256

_names = itertools.count()


def unique(prefix):
    return "%s-%d-%d" % (prefix, os.getpid(), next(_names))


def sample_tensors():
    """Small tensors of every supported dtype, with a scalar and a zero-size one."""
    g = torch.Generator().manual_seed(7)
    out = {}
    for name in dtypes.supported_names():
        dtype = dtypes.torch_dtype(name)
        raw = torch.randint(0, 256, (3 * 5 * dtypes.item_size(name),), dtype=torch.uint8, generator=g)
        if dtype == torch.bool:
            raw = raw % 2
        out["w.%s" % name.lower()] = raw.view(dtype).view(3, 5)
    out["w.scalar"] = torch.tensor(3.5, dtype=torch.bfloat16)
    out["w.empty"] = torch.empty(0, 4, dtype=torch.float16)
    return out


def shm_mappings(name, pid="self"):
    """How many mappings of /dev/shm/<name> a process has (unlinked ones count too)."""
    path = "/dev/shm/" + name
    with open("/proc/%s/maps" % pid) as maps:
        fields = (line.split(None, 5) for line in maps)
        return sum(1 for f in fields if len(f) == 6 and f[5].rstrip("\n").replace(" (deleted)", "") == path)


class FakeServer:
    """The parameter server's side: listens on an abstract socket, owns a shm segment, packs tensors
    into it and sends messages; `call` returns the worker's reply."""

    def __init__(self, size=1 << 16, listen=True):
        self.address = "@" + unique("ckpt-test")
        self.session = os.urandom(32).hex()
        self.ticket = self.address + "#" + self.session
        self.segment = unique("ckpt-test-seg")
        self.size = size
        path = "/dev/shm/" + self.segment
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, size)
            self.memory = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self.listener = None
        self.conn = None
        if listen:
            self.listen()

    def listen(self):
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(protocol.endpoint(self.address))
        self.listener.listen(1)

    def accept(self, timeout=10):
        """Accepts the worker and checks that it presented this server's session key first."""
        self.listener.settimeout(timeout)
        if self.conn is not None:
            self.conn.close()
        self.conn, _ = self.listener.accept()
        hello = json.loads(protocol.read_frame(self.conn, timeout))
        self.wants = None
        self.maps_segments = hello.pop("segments", False) is True
        self.takes_strided = hello.pop("strided", False) is True
        self.prepares = hello.pop("prepares", False) is True
        if hello == {"session": self.session, "wants": True}:
            self.wants = json.loads(protocol.read_frame(self.conn, timeout))
        elif hello != {"session": self.session}:
            raise AssertionError("the worker's first frame is %r, not this server's session key" % (hello,))

    def call(self, message, timeout=10):
        protocol.send(self.conn, message, timeout)
        frame = protocol.read_frame(self.conn, timeout)
        return None if frame is None else json.loads(frame)

    def attach(self):
        return self.call({"type": "attach", "kind": "shm", "handle": self.segment, "size": self.size, "device_id": "dev-0"})

    def pack(self, tensors, start=0, checksums=False, crc32=False, wants=None, in_place=False):
        """Writes tensors at 256-byte aligned offsets from `start`; returns their wire descriptions. With
        `wants` (a worker's declaration), only what it keeps, sliced tensors as parts, as the parameter
        server sends them; with `in_place` too, a part of one slice along a later dimension is described
        where it lies in its whole tensor (written whole), with a "pitch", as to a worker that takes them."""
        wire, offset, parts, whole = [], start, {}, {}
        if wants is not None:
            tensors, parts = dict(tensors), {}
            for name in list(tensors):
                want = wants["tensors"].get(name, wants.get("others", "whole"))
                if want == "none":
                    del tensors[name]
                elif want != "whole":
                    t, d = tensors[name], want["dim"]
                    parts[name] = {"dim": d, "slices": want["slices"], "full_shape": list(t.shape)}
                    if in_place and d > 0 and len(want["slices"]) == 1:
                        whole[name] = (t, want["slices"][0][0] * t.stride(d) * t.element_size(), t.stride(d - 1) * t.element_size())
                    tensors[name] = torch.cat([t.narrow(d, s, n) for s, n in want["slices"]], d)
        for name, t in tensors.items():
            n = t.numel() * t.element_size()
            written, first, pitch = whole.get(name, (t, 0, None))
            size = written.numel() * written.element_size()
            if size:
                flat = written.contiguous().reshape(-1).view(torch.uint8)
                torch.frombuffer(self.memory, dtype=torch.uint8)[offset:offset + size].copy_(flat)
            entry = {"name": name, "dtype": dtypes.wire_name(t.dtype), "shape": list(t.shape), "offset": offset + first, "nbytes": n}
            if pitch is not None:
                entry["pitch"] = pitch
            if checksums:
                entry["sha256"] = tensor_sha256(t)
            if crc32:
                entry["crc32"] = "%08x" % tensor_crc32(t)
            if name in parts:
                entry["part"] = parts[name]
            wire.append(entry)
            offset += (size + 255) // 256 * 256
        return wire

    def close(self):
        for s in (self.conn, self.listener):
            if s is not None:
                s.close()
        HOST_MAPPINGS.drop(self.address)  # A receiver in this process keeps its host mappings for the next update: not past this server.
        self.memory.close()
        try:
            os.unlink("/dev/shm/" + self.segment)
        except FileNotFoundError:
            pass


class Worker(threading.Thread):
    """Runs receive_update on a thread; `result` or `error` once joined."""

    def __init__(self, fn):
        super().__init__(daemon=True)
        self.fn = fn
        self.result = self.error = None

    def run(self):
        try:
            self.result = self.fn()
        except BaseException as e:  # noqa: BLE001 - the test inspects it
            self.error = e

    def outcome(self, timeout=10):
        self.join(timeout)
        if self.is_alive():
            raise AssertionError("the receiver did not end within %g s" % timeout)
        return self.result, self.error
