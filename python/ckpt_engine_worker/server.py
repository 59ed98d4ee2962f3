"""The HTTP surface `ckpt-engine update --endpoint URL` drives, for a PyTorch engine that has none of its
own (standard library only): GET /health, POST /collective_rpc (vLLM's body: {"method":
"update_weights_from_ipc", "args": [{device_id: ticket}]}) and GET /v1/weights/digest (SHA-256 of every
state_dict() tensor per device, what `ckpt-engine verify` compares).

    serve(model, port=0)     # prints "listening on http://127.0.0.1:PORT", serves until interrupted
"""

import json
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from . import state_dict_loader
from .segments import tensor_sha256
from .shard_aware import ShardAware

MAX_BODY = 1 << 20  # an update's body is a small map of tickets; the parameter server's API takes no more either
READ_TIMEOUT = 30  # seconds a client may take to send its request (every read of it), so a stalled one frees its thread


class BadRequest(Exception):
    """A request this server refuses before running anything: the HTTP status and what was wrong."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


class EngineWorker:
    """One device of the engine: its model, how it loads (default: by state_dict name) and its post-load
    hook. Shard-aware unless told otherwise: after the first update it declares what its loader keeps."""

    def __init__(self, model, load=None, finish=None, device_id=None, shard_aware=True):
        self.model, self.finish, self.device_id = model, finish, device_id
        load = load or state_dict_loader(model)
        self.shard = ShardAware([(model, load)]) if shard_aware else None
        self.load = load

    def receive(self, ticket, idle_timeout=None):
        from .receiver import receive_update

        if self.shard is not None:
            return self.shard.receive(ticket, self.finish, idle_timeout=idle_timeout)
        return receive_update(ticket, self.load, self.finish, idle_timeout=idle_timeout)


class EngineServer(ThreadingHTTPServer):
    """Serves `workers` (EngineWorker each; a single one with no device_id takes the update's only ticket)."""

    daemon_threads = True

    def __init__(self, workers, address=("127.0.0.1", 0), idle_timeout=None, routes=None):
        self.workers, self.idle_timeout = list(workers), idle_timeout
        self.routes = dict(routes or {})  # more GET paths: {path: () -> JSON-able}
        self.busy = threading.Lock()
        self.running = set()
        super().__init__(address, _Handler)

    @property
    def url(self):
        return "http://%s:%d" % self.server_address[:2]

    def update(self, tickets):
        """Runs one update on the workers whose devices `tickets` names ({device_id: ticket}; a server of
        one worker without a device id takes a map of one), all at once; returns their summaries,
        raises naming the failures. Several engine instances may share one server: each instance's
        call names its own devices."""
        if not isinstance(tickets, dict) or not all(isinstance(v, str) for v in tickets.values()):
            raise ValueError("args[0] must map device ids to tickets")
        if len(self.workers) == 1 and self.workers[0].device_id is None and len(tickets) == 1:
            chosen = [(self.workers[0], next(iter(tickets.values())))]
        else:
            chosen = [(w, tickets[w.device_id]) for w in self.workers if w.device_id in tickets]
        if not chosen:
            raise LookupError("none of this engine's devices (%s) is in the update's tickets (%s)" % (
                ", ".join(str(w.device_id) for w in self.workers), ", ".join(sorted(tickets))))
        with self.busy:
            if any(w in self.running for w, _ in chosen):
                raise BlockingIOError("an update of these devices is already running")
            self.running.update(w for w, _ in chosen)
        results = [None] * len(chosen)

        def run(i):
            try:
                results[i] = (True, chosen[i][0].receive(chosen[i][1], self.idle_timeout).as_dict())
            except Exception as e:  # noqa: BLE001 - reported to the caller
                results[i] = (False, "%s: %s" % (type(e).__name__, e))

        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(chosen))]
        try:
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        finally:
            with self.busy:
                self.running.difference_update(w for w, _ in chosen)
        failed = ["device %s: %s" % (chosen[i][0].device_id, r[1]) for i, r in enumerate(results) if not r[0]]
        if failed:
            raise RuntimeError("; ".join(failed))
        return [r[1] for r in results]


class _Handler(BaseHTTPRequestHandler):
    timeout = READ_TIMEOUT

    def log_message(self, fmt, *args):
        pass

    def reply(self, status, body):
        data = json.dumps(body).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # A caller that gave up on a failed update.

    def do_GET(self):
        if self.path == "/health":
            self.reply(200, {})
        elif self.path == "/v1/weights/digest":
            self.reply(200, {"shards": [{"device_id": w.device_id or "", "tensors": {n: tensor_sha256(t) for n, t in w.model.state_dict().items()}}
                                        for w in self.server.workers]})
        elif self.path in self.server.routes:
            self.reply(200, self.server.routes[self.path]())
        else:
            self.reply(404, {"error": "no such path %s" % self.path})

    def body(self):
        """The request body, by Content-Length or chunked, at most MAX_BODY bytes; BadRequest otherwise (411
        without either, 413 past the bound, 400 for malformed chunks). A refused body is not read: the
        connection is closed after the answer."""
        self.close_connection = True  # until the whole body has been read
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = bytearray()
            while True:
                line = self.rfile.readline(66)
                try:
                    size = int(line.split(b";")[0].strip(), 16)
                except ValueError:
                    raise BadRequest(400, "bad chunk size line %r at body byte %d" % (bytes(line[:32]), len(data))) from None
                if size < 0:
                    raise BadRequest(400, "bad chunk size line %r at body byte %d" % (bytes(line[:32]), len(data)))
                if len(data) + size > MAX_BODY:
                    raise BadRequest(413, "the body is over %d bytes" % MAX_BODY)
                if size == 0:
                    for _ in range(64):  # trailer lines, up to the empty one
                        if self.rfile.readline(1026) in (b"\r\n", b"\n", b""):
                            break
                    else:
                        raise BadRequest(400, "too many trailer lines after the last chunk")
                    self.close_connection = False
                    return bytes(data)
                chunk = self.rfile.read(size)
                if len(chunk) != size or self.rfile.readline(3) not in (b"\r\n", b"\n"):
                    raise BadRequest(400, "chunk at body byte %d is truncated or not followed by CRLF" % len(data))
                data += chunk
        if "Content-Length" not in self.headers:
            raise BadRequest(411, "the body needs a Content-Length or chunked transfer encoding")
        try:
            length = int(self.headers["Content-Length"])
        except ValueError:
            raise BadRequest(400, "Content-Length %r is not a number" % self.headers["Content-Length"]) from None
        if length < 0:
            raise BadRequest(400, "Content-Length %d is negative" % length)
        if length > MAX_BODY:
            raise BadRequest(413, "the body is %d bytes, over %d" % (length, MAX_BODY))
        data = self.rfile.read(length)
        if len(data) != length:
            raise BadRequest(400, "the body ended after %d of its %d bytes" % (len(data), length))
        self.close_connection = False
        return data

    def do_POST(self):
        if self.path != "/collective_rpc":
            self.close_connection = True  # its body is not read
            self.reply(404, {"error": "no such path %s" % self.path})
            return
        try:
            try:
                body = self.body()
            except socket.timeout:
                raise BadRequest(408, "the body did not arrive within %d s" % READ_TIMEOUT) from None
            try:
                request = json.loads(body)
            except (ValueError, RecursionError) as e:
                raise BadRequest(400, "the body is not JSON: %s" % e) from None
            if not isinstance(request, dict) or request.get("method") != "update_weights_from_ipc" or not isinstance(request.get("args"), list) \
                    or len(request["args"]) != 1:
                raise BadRequest(400, "expected {\"method\": \"update_weights_from_ipc\", \"args\": [{device_id: ticket}]}")
            results = self.server.update(request["args"][0])
        except BadRequest as e:
            self.reply(e.status, {"error": "bad request: %s" % e})
        except (ValueError, LookupError) as e:
            self.reply(400, {"error": "bad request: %s" % e})
        except BlockingIOError as e:
            self.reply(409, {"error": str(e)})
        except Exception as e:  # noqa: BLE001 - the update's failure goes back to the parameter server
            sys.stderr.write("ckpt-engine-worker: update failed: %s\n" % e)
            self.reply(500, {"error": str(e)})
        else:
            self.reply(200, {"results": results})


def serve(model, port=8000, host="127.0.0.1", load=None, finish=None, shard_aware=True, idle_timeout=None):
    """Serves one model (one device) until interrupted: `ckpt-engine update --endpoint URL` updates it.
    load(weights): the engine's loader (default: copy by state_dict name); finish(): its post-load hook."""
    server = EngineServer([EngineWorker(model, load, finish, shard_aware=shard_aware)], (host, port), idle_timeout)
    print("listening on %s" % server.url, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
