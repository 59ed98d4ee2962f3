"""The receiving side of a weight update: connect to this device's parameter server, map the buffer
it attaches, hand every bucket's tensors (views, no copies) to the engine's loader, run the post-load
hook, and answer every message. One call receives one update.

A CUDA buffer is closed at every release (and on abort or failure): the parameter server may free its
memory only after every importer closed the IPC handle. Host segments stay mapped between updates (see
segments.HostMappings), as the .NET receiver keeps them: mapping them again and faulting their pages in
would cost more than the copies; an attach naming other segments, and any failure, unmaps them.
"""

import socket
import time
import traceback

from . import dtypes
from .cuda import device_uuid
from .protocol import PeerClosed, ProtocolError, connect, decode, parse_ticket, peer_refusal, read_frame, send
from .segments import HOST_MAPPINGS, open_segment

DEFAULT_IDLE_TIMEOUT = 120.0
"""How long the parameter server may take to listen, or stay silent between messages (seconds)."""

ABORT_WAIT = 30.0
"""How long after a failure the receiver waits for the parameter server's abort."""


class WeightReceiveError(RuntimeError):
    """The update failed here: the loader or hook raised (its text went back to the parameter
    server), a message was bad, or the parameter server went silent or away."""


class WeightUpdateAborted(WeightReceiveError):
    """The parameter server aborted the update (the failure was elsewhere); the text is its reason."""


class Weights(list):
    """A bucket's (name, tensor) pairs as the loader gets them. `parts`: {name: (dim, slices, full_shape)}
    for the tensors that arrived as the slices this worker declared (the tensor is then the slices along
    `dim`, packed); only a worker that declared wants gets any."""

    def __init__(self, pairs=(), parts=None):
        super().__init__(pairs)
        self.parts = parts or {}


class ReceiveSummary:
    """What one update delivered to this device."""

    def __init__(self, device_id, buckets, tensors, nbytes, seconds):
        self.device_id = device_id
        self.buckets = buckets
        self.tensors = tensors
        self.bytes = nbytes
        self.seconds = seconds

    def as_dict(self):
        return {"device_id": self.device_id, "buckets": self.buckets, "tensors": self.tensors,
                "bytes": self.bytes, "seconds": round(self.seconds, 6)}

    def __repr__(self):
        return "ReceiveSummary(%r)" % (self.as_dict(),)


def receive_update(ticket, load, finish=None, device=None, idle_timeout=None, wants=None, strided=False):
    """Receives one update with the `ticket` the parameter server handed the engine ("address#session";
    "@name" is an abstract socket, see protocol.address_for), retrying the connection until it listens.
    The listening process must run as this process's user; the session key proves to it that this
    connection is the worker of this very update. A ticket is a secret: do not log it.

    load(weights): called once per bucket with a list of (name, torch.Tensor) views into the shared
        buffer; it must copy what it keeps (the buffer is reused for the next bucket).
    finish(): the post-load hook, run on "finish" after the buffer was released.
    device: the CUDA device to open a "cuda-ipc" buffer on (default: the current one).
    wants: what this worker keeps, {"others": "whole"|"none", "tensors": {name: "whole" | "none" |
        {"dim": d, "slices": [[start, length], ...]}}} (see recorder.py); the parameter server then
        sends only that, and tensors it slices reach `load` as parts (see Weights.parts). None: everything.
    strided: `load` also takes a part of one slice along a later dimension where it lies inside its whole tensor
        (a column slice in the owners' memory, one host): a non-contiguous view, to be copied with `copy_` rather
        than `view`-ed; nothing copies it before `load` does. False: every part arrives packed (contiguous).
    Returns a ReceiveSummary after "finish"; raises ValueError for a malformed ticket, else
    WeightUpdateAborted (also when the server refused the session key) or WeightReceiveError.
    """
    address, session = parse_ticket(ticket)
    idle = DEFAULT_IDLE_TIMEOUT if idle_timeout is None else float(idle_timeout)
    if idle <= 0:
        raise ValueError("idle_timeout must be positive, got %r" % (idle_timeout,))
    try:
        sock = connect(address, idle)
    except PeerClosed as e:
        raise WeightReceiveError(str(e)) from None
    with sock:
        refusal = peer_refusal(sock, "the process listening at %s" % address)
        if refusal:
            raise WeightReceiveError(refusal + " (is another user's process squatting this device's socket name?)")
        try:
            # "segments": this receiver maps the owners' registered segments an attach may name beside its buffer;
            # "strided": it takes parts in place (see `strided`); "prepares": it takes a session that only prepares (an attach
            # with "prepare": it maps what the attach names, then the session ends at "release": no loads, no finish hook).
            hello = {"session": session, "segments": True, "prepares": True}
            if wants is not None:
                hello["wants"] = True
            if strided:
                hello["strided"] = True
            send(sock, hello, idle)
            if wants is not None:
                send(sock, wants, idle)
        except OSError as e:
            raise WeightReceiveError("lost the parameter server at %s while sending the session key: %s" % (address, e)) from None
        return _Session(address, sock, load, finish, device, idle, strided).run()


def describe(error):
    """An exception as the one line the parameter server shows: type, message, and where it was raised."""
    frames = traceback.extract_tb(error.__traceback__)
    where = " (at %s:%d in %s)" % (frames[-1].filename, frames[-1].lineno, frames[-1].name) if frames else ""
    return "%s: %s%s" % (type(error).__name__, error, where)


class _Session:
    """One update on one connection: the protocol's state machine (attach, load*, release, finish;
    abort at any point), message validation, and the buffer while attached."""

    def __init__(self, address, sock, load, finish, device, idle, strided=False):
        self.strided = strided
        self.address = address
        self.sock = sock
        self.load = load
        self.finish = finish
        self.device = device
        self.idle = idle
        self.started = time.monotonic()
        self.phase = "connected"
        self.segment = None
        self.registered = []  # The owners' registered segments the attach named, read-only: a load's "segment" i >= 1 is registered[i - 1].
        self.device_id = ""
        self.buckets = self.tensors = self.bytes = 0
        self.last_bucket = -1
        self.failure = None
        self.preparing = False  # The attach said "prepare": the session ends at release and takes no load.
        self.kept = False  # The buffer and registered segments are HOST_MAPPINGS' (host memory), kept for the next update.

    def run(self):
        try:
            while True:
                message = self._next()
                if message is None:
                    continue
                kind = message["type"]
                if self.failure is not None:
                    if kind == "abort":
                        self._release()
                        self._reply(True)
                        raise WeightReceiveError(self.failure)
                    self._reply(False, "%s after a failure: %s" % (kind, self.failure))
                    continue
                if kind == "abort":
                    self._release()
                    try:
                        self._reply(True)
                    except WeightReceiveError:
                        pass  # A server that aborts and leaves at once: the abort is still the news.
                    raise WeightUpdateAborted(str(message.get("reason") or "the parameter server aborted the update"))
                if kind == "attach" and self.phase == "connected":
                    self._attach(message)
                elif kind == "load" and self.phase == "attached" and self.preparing:
                    self._fail("'load' in a session that only prepares (its attach said \"prepare\")")
                elif kind == "load" and self.phase == "attached":
                    self._load(message)
                elif kind == "release" and self.phase == "attached":
                    self._end_of_buckets()
                    if self.preparing and self.phase == "released":
                        # A prepare has checked the way here (engine, socket, ticket) and mapped what the attach named: host segments stay mapped.
                        return ReceiveSummary(self.device_id, 0, 0, 0, time.monotonic() - self.started)
                elif kind == "finish" and self.phase == "released":
                    if self._finish():
                        return ReceiveSummary(self.device_id, self.buckets, self.tensors, self.bytes,
                                              time.monotonic() - self.started)
                else:
                    self._fail("'%s' out of order %s: expected %s (or abort)" % (kind, self._where(), self._expected()))
        finally:
            self._release()

    # --- messages -------------------------------------------------------------------------------

    def _attach(self, message):
        kind, handle, size = message.get("kind"), message.get("handle"), message.get("size")
        if not isinstance(handle, str) or type(size) is not int or size <= 0:
            self._fail("attach: needs a string handle and a positive integer size, got handle %r, size %r" % (handle, size))
            return
        device_id = str(message.get("device_id") or "")
        mismatch = self._other_gpu(kind, device_id)
        if mismatch:
            self._fail(mismatch)
            return
        extra = message.get("segments") or []
        if not isinstance(extra, list) or not all(isinstance(r, dict) and isinstance(r.get("handle"), str) and type(r.get("size")) is int
                                                  and r["size"] > 0 for r in extra) or (extra and kind != "shm"):
            self._fail("attach: 'segments' must be a list of {handle, size > 0} beside a 'shm' buffer, got %r" % (extra,))
            return
        error = None
        if kind == "shm":
            try:
                self.segment, self.registered = HOST_MAPPINGS.acquire(self.address, handle, size, [(r["handle"], r["size"]) for r in extra])
                self.kept = True
                if message.get("prepare") is True and message.get("prefault") is True:
                    # Loads will read the owners' segments in place: fault in now their pages that hold data (not their holes).
                    for segment in {id(s): s for s in self.registered}.values():
                        segment.prefault_resident()
            except Exception as e:  # noqa: BLE001 - any failure to map goes back as text
                error = "attach: cannot map shm segment '%s' of %d bytes or the registered segments beside it: %s" % (handle, size, describe(e))
        else:  # Further segments come only beside a "shm" buffer (checked above).
            try:
                self.segment = open_segment(kind, handle, size, self.device)
            except Exception as e:  # noqa: BLE001 - any failure to map goes back as text
                error = "attach: cannot map %s segment '(handle)' of %d bytes: %s" % (kind, size, describe(e))
        if error:
            self._fail(error)
            return
        self.device_id = device_id
        self.preparing = message.get("prepare") is True
        self.phase = "attached"
        self._reply(True)

    def _other_gpu(self, kind, device_id):
        """The error when a CUDA buffer belongs to another GPU than this worker's (its parameter server
        answered on the wrong socket), else None. Ids that are not GPU UUIDs are not checked."""
        if kind != "cuda-ipc" or not device_id.startswith(("GPU-", "MIG-")):
            return None
        import torch

        index = torch.device(self.device).index if self.device is not None else None
        if index is None:
            index = torch.cuda.current_device()
        try:
            mine = device_uuid(index)
        except Exception as e:  # noqa: BLE001 - reported as text
            return "attach: cannot read the UUID of cuda:%d to check the buffer's device %s: %s" % (index, device_id, describe(e))
        if mine.lower() != device_id.lower():
            return "attach: the buffer is on device %s, but this worker is on cuda:%d (%s)" % (device_id, index, mine)
        return None

    def _load(self, message):
        bucket = message.get("bucket")
        weights, nbytes, error = self._views(message)
        if error is None:
            try:
                self.load(weights)
                self.segment.synchronize()
            except Exception as e:  # noqa: BLE001 - the loader's failure goes back as text
                error = "load of bucket %s: %s" % (bucket, describe(e))
        count = len(weights)
        # Drop every view (and, above, any traceback that held them) before the buffer may be unmapped.
        del weights
        if error is not None:
            self._fail(error)
            return
        self.buckets += 1
        self.tensors += count
        self.bytes += nbytes
        self.last_bucket = bucket
        self._reply(True)

    def _end_of_buckets(self):
        segments = [self.segment] + self.registered
        if self.kept:
            # Kept for the next update, unless a loader kept views of them: then they go (unmapped when those are freed).
            kept = [(s.name, n) for s, n in ((s, s.outstanding()) for s in segments) if n]
            if not kept:
                self.segment, self.registered, self.kept = None, [], False
                HOST_MAPPINGS.give_back(self.address)
        else:
            self.segment, self.registered = None, []
            kept = [(s.name, n) for s, n in ((s, s.release()) for s in segments) if n]
        if kept:
            self._fail("release: %d reference(s) to tensors in segment %s outlived the loader; the loader must copy "
                       "what it keeps (the buffer is reused), it is unmapped when they are freed" % (sum(n for _, n in kept), kept[0][0]))
            return
        self.phase = "released"
        self._reply(True)

    def _finish(self):
        if self.finish is not None:
            try:
                self.finish()
            except Exception as e:  # noqa: BLE001 - the hook's failure goes back as text
                error = "post-load hook: %s" % describe(e)
            else:
                error = None
            if error is not None:
                self._fail(error)
                return False
        self._reply(True)
        return True

    def _views(self, message):
        """Checks every tensor against the buffer and the dtype rules, then views it. Returns
        (weights, total bytes, error or None)."""
        bucket, tensors = message.get("bucket"), message.get("tensors")
        at = "load of bucket %s" % (bucket,)
        if type(bucket) is not int or bucket < 0:
            return [], 0, "%s: bucket index must be a non-negative integer" % at
        if not isinstance(tensors, list):
            return [], 0, "%s: 'tensors' must be a list" % at
        weights, names, total = Weights(), set(), 0
        for i, t in enumerate(tensors):
            if not isinstance(t, dict):
                return [], 0, "%s: tensor #%d is not an object" % (at, i)
            name, dtype, shape, offset, nbytes = (t.get(k) for k in ("name", "dtype", "shape", "offset", "nbytes"))
            if not isinstance(name, str) or not name:
                return [], 0, "%s: tensor #%d has no name" % (at, i)
            what = "%s: tensor '%s' (#%d)" % (at, name, i)
            if name in names:
                return [], 0, "%s appears twice in the bucket" % what
            names.add(name)
            try:
                expected = dtypes.byte_length(dtype, shape)
            except ValueError as e:
                return [], 0, "%s: %s" % (what, e)
            if nbytes != expected or type(nbytes) is not int:
                return [], 0, "%s: nbytes is %r, dtype %s and shape %s need %d" % (what, nbytes, dtype, shape, expected)
            index = t.get("segment") or 0
            if type(index) is not int or not 0 <= index <= len(self.registered):
                return [], 0, "%s: segment %r was not attached (this update attached %d)" % (what, index, len(self.registered) + 1)
            segment = self.registered[index - 1] if index else self.segment
            size = segment.size
            part = None
            if t.get("part") is not None:
                part, error = _part(t["part"], shape)
                if error:
                    return [], 0, "%s: part %s" % (what, error)
            pitch, rows, extent = t.get("pitch"), 1, nbytes
            if pitch is not None:
                rows, extent, error = self._strided(t, part, shape, nbytes)
                if error:
                    return [], 0, "%s: %s" % (what, error)
            if type(offset) is not int or offset < 0 or offset > size - extent:
                if extent != nbytes:
                    return [], 0, "%s: bytes [%r, %r) (%d rows of %d bytes, %d bytes apart) are outside segment %s of %d bytes" % (
                        what, offset, offset + extent if type(offset) is int else None, rows, nbytes // rows, pitch, segment.name, size)
                return [], 0, "%s: bytes [%r, %r) are outside segment %s of %d bytes" % (
                    what, offset, offset + nbytes if type(offset) is int else None, segment.name, size)
            crc = t.get("crc32")
            if crc is not None:
                if not isinstance(crc, str) or len(crc) != 8 or any(c not in "0123456789abcdefABCDEF" for c in crc):
                    return [], 0, "%s: crc32 %r is not 8 hex digits" % (what, crc)
                actual = "%08x" % segment.crc32(offset, nbytes)
                if actual != crc.lower():
                    return [], 0, "%s: tensor '%s' on device '%s' has crc32 %s, expected %s (corrupted on the way)" % (
                        at, name, self.device_id, actual, crc.lower())
            checksum = t.get("sha256")
            if checksum is not None:
                actual = segment.sha256(offset, nbytes)
                if actual != str(checksum).lower():
                    return [], 0, "%s has sha256 %s, expected %s" % (what, actual, str(checksum).lower())
            if part is not None:
                weights.parts[name] = part
            try:
                if pitch is not None:
                    weights.append((name, segment.strided_view(dtype, shape, part[0], offset, pitch, extent)))
                else:
                    weights.append((name, segment.view(dtype, shape, offset, nbytes)))
            except (ValueError, RuntimeError) as e:
                return [], 0, "%s: %s" % (what, e)
            total += nbytes
        return weights, total, None

    def _strided(self, t, part, shape, nbytes):
        """(rows, bytes from the first row's start to the last row's end, None) of a part said to lie in place
        ("pitch": its rows that far apart inside its whole tensor), or (1, nbytes, why not)."""
        pitch = t["pitch"]
        if not self.strided:
            return 1, nbytes, "pitch %r sent to a worker that takes packed parts only (its hello did not say \"strided\")" % (pitch,)
        if part is None or len(part[1]) != 1:
            return 1, nbytes, ("pitch %r comes without a part" % (pitch,) if part is None
                               else "pitch %r comes with a part of %d slices (it describes one)" % (pitch, len(part[1])))
        if t.get("crc32") is not None or t.get("sha256") is not None:
            return 1, nbytes, "a part in place carries no checksum (checksums cover whole tensors)"
        if type(pitch) is not int or pitch <= 0:
            return 1, nbytes, "pitch %r must be a positive integer" % (pitch,)
        rows = 1
        for n in shape[:part[0]]:
            rows *= n
        row = nbytes // rows if rows else 0
        if pitch < row:
            return 1, nbytes, "pitch %d is smaller than a row of the part (%d bytes)" % (pitch, row)
        extent = (rows - 1) * pitch + row if rows else 0
        if extent >= 1 << 63:
            return 1, nbytes, "%d rows %d bytes apart overflow a 64-bit offset" % (rows, pitch)
        return rows, extent, None

    # --- plumbing -------------------------------------------------------------------------------

    def _fail(self, error):
        """Replies with the error and remembers it: the update now ends in failure once the
        parameter server aborts or leaves."""
        self.failure = error
        self._release()
        self._reply(False, error)

    def _release(self):
        """Unmaps what this session still holds: after a failure or abort (the normal end hands kept mappings back first)."""
        segments = ([self.segment] if self.segment is not None else []) + self.registered
        self.segment, self.registered = None, []
        if self.kept:
            self.kept = False
            HOST_MAPPINGS.drop(self.address)
            return
        for segment in segments:
            segment.release()

    def _next(self):
        """The next message, or None after replying to a bad one; raises when the server is gone."""
        wait = self.idle if self.failure is None else min(self.idle, ABORT_WAIT)
        try:
            frame = read_frame(self.sock, wait)
        except socket.timeout:
            raise WeightReceiveError(self.failure or "no message from the parameter server at %s within %g s %s (expected %s)" % (
                self.address, wait, self._where(), self._expected())) from None
        except ProtocolError as e:
            error = self.failure or "bad frame from the parameter server at %s %s: %s" % (self.address, self._where(), e)
            try:
                self._reply(False, error)
            except WeightReceiveError:
                pass  # It is gone as well.
            raise WeightReceiveError(error) from None
        except OSError as e:
            raise WeightReceiveError(self.failure or "lost the parameter server at %s %s: %s" % (self.address, self._where(), e)) from None
        if frame is None:
            raise WeightReceiveError(self.failure or "the parameter server at %s closed the connection %s" % (self.address, self._where()))
        try:
            return decode(frame)
        except ProtocolError as e:
            error = "bad message %s: %s" % (self._where(), e)
        if self.failure is None:
            self._fail(error)
        else:
            self._reply(False, error)
        return None

    def _reply(self, ok, error=None):
        try:
            send(self.sock, {"ok": True} if ok else {"ok": False, "error": error}, self.idle)
        except OSError as e:
            raise WeightReceiveError(self.failure or "lost the parameter server at %s while replying %s: %s" % (
                self.address, self._where(), e)) from None

    def _where(self):
        if self.phase == "connected":
            return "before attach"
        if self.phase == "attached":
            return "after attach, before any bucket" if self.last_bucket < 0 else "after bucket %d (%d loaded)" % (self.last_bucket, self.buckets)
        return "after release, before finish"

    def _expected(self):
        return {"connected": "attach", "attached": "load or release"}.get(self.phase, "finish")


def _part(part, shape):
    """(dim, slices, full_shape) of a load's part, checked against the part's shape; or (None, error)."""
    if not isinstance(part, dict):
        return None, "must be an object, not %r" % (part,)
    dim, slices, full = part.get("dim"), part.get("slices"), part.get("full_shape")
    ints = lambda v: isinstance(v, list) and all(type(x) is int and x >= 0 for x in v)  # noqa: E731
    if not ints(full) or type(dim) is not int or not 0 <= dim < len(full) or not isinstance(slices, list) or not slices \
            or not all(ints(s) and len(s) == 2 and s[1] > 0 and s[0] + s[1] <= full[dim] for s in slices):
        return None, "%r is not {dim, slices: [[start, length], ...] inside full_shape, full_shape}" % (part,)
    expected = list(full)
    expected[dim] = sum(s[1] for s in slices)
    if list(shape) != expected:
        return None, "of slices %s along dimension %d of %s has shape %s, not %s" % (slices, dim, full, expected, shape)
    return (dim, [tuple(s) for s in slices], tuple(full)), None
