"""The HTTP surface `ckpt-engine update --endpoint URL` drives, for a PyTorch engine that has none of its
own (standard library only): GET /health, POST /collective_rpc (vLLM's body: {"method":
"update_weights_from_ipc", "args": [{device_id: ticket}]}) and GET /v1/weights/digest (SHA-256 of every
state_dict() tensor per device, what `ckpt-engine verify` compares).

    serve(model, port=0)     # prints "listening on http://127.0.0.1:PORT", serves until interrupted
"""

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from . import state_dict_loader
from .segments import tensor_sha256
from .shard_aware import ShardAware

MAX_BODY = 16 << 20


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
    def log_message(self, fmt, *args):
        pass

    def reply(self, status, body):
        data = json.dumps(body).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
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
        """The request body, by Content-Length or chunked; ValueError when it is neither or too large."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline(64).split(b";")[0], 16)
                if len(data) + size > MAX_BODY:
                    raise ValueError("body over %d bytes" % MAX_BODY)
                chunk = self.rfile.read(size + 2)[:size]
                if size == 0:
                    return data
                data += chunk
        length = int(self.headers.get("Content-Length") or -1)
        if not 0 <= length <= MAX_BODY:
            raise ValueError("needs a Content-Length up to %d bytes" % MAX_BODY)
        return self.rfile.read(length)

    def do_POST(self):
        if self.path != "/collective_rpc":
            self.reply(404, {"error": "no such path %s" % self.path})
            return
        try:
            request = json.loads(self.body())
            if request.get("method") != "update_weights_from_ipc" or not isinstance(request.get("args"), list) or len(request["args"]) != 1:
                raise ValueError("expected {\"method\": \"update_weights_from_ipc\", \"args\": [{device_id: ticket}]}")
        except (ValueError, AttributeError) as e:
            self.reply(400, {"error": "bad request: %s" % e})
            return
        try:
            results = self.server.update(request["args"][0])
        except BlockingIOError as e:
            self.reply(409, {"error": str(e)})
            return
        except Exception as e:  # noqa: BLE001 - the update's failure goes back to the parameter server
            sys.stderr.write("ckpt-engine-worker: update failed: %s\n" % e)
            self.reply(500, {"error": str(e)})
            return
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
