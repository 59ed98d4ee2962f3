import http.client
import json
import socket
import threading
import unittest

import torch

from ckpt_engine_worker import server as engine_server
from ckpt_engine_worker.server import EngineServer, EngineWorker
from support import FakeServer, Worker


def tensors(seed):
    g = torch.Generator().manual_seed(seed)
    return {"weight": torch.randn(3, 4, generator=g), "bias": torch.randn(3, generator=g)}


class EngineServerTests(unittest.TestCase):
    """The standard-library endpoint over a real socket: /collective_rpc bodies by Content-Length and
    chunked, the bounds on them, 409 while the device updates, and the updates it runs (against the
    parameter-server double)."""

    def setUp(self):
        self.model = torch.nn.Linear(4, 3)
        self.engine = EngineServer([EngineWorker(self.model, shard_aware=False)], idle_timeout=10)
        thread = threading.Thread(target=self.engine.serve_forever, daemon=True)
        thread.start()
        self.addCleanup(self.engine.server_close)
        self.addCleanup(thread.join, 10)
        self.addCleanup(self.engine.shutdown)
        self.ps = FakeServer()
        self.addCleanup(self.ps.close)

    def raw(self, data):
        """Sends `data` as it is (request line, headers, body) and returns (status, JSON answer)."""
        with socket.create_connection(self.engine.server_address, timeout=10) as s:
            s.sendall(data)
            response = http.client.HTTPResponse(s)
            response.begin()
            return response.status, json.loads(response.read())

    def post(self, body, chunked=False):
        head = b"POST /collective_rpc HTTP/1.1\r\nHost: engine\r\nContent-Type: application/json\r\n"
        if not chunked:
            return self.raw(head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
        pieces = [body[i:i + 7] for i in range(0, len(body), 7)]  # several chunks, one with an extension
        chunks = b"".join(b"%x%s\r\n%s\r\n" % (len(p), b";ext=1" if i == 1 else b"", p) for i, p in enumerate(pieces))
        return self.raw(head + b"Transfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n")

    def rpc(self, tickets=None):
        return json.dumps({"method": "update_weights_from_ipc", "args": [tickets or {"dev-0": self.ps.ticket}], "kwargs": {}}).encode()

    def serve_update(self, weights):
        """The parameter server's side of one update, once the engine's worker has connected."""
        self.ps.accept()
        self.assertEqual(self.ps.attach(), {"ok": True})
        for m in ({"type": "load", "bucket": 0, "tensors": self.ps.pack(weights)}, {"type": "release"}, {"type": "finish"}):
            self.assertEqual(self.ps.call(m), {"ok": True})

    def assertHolds(self, weights):
        self.assertTrue(all(torch.equal(self.model.state_dict()[n], t) for n, t in weights.items()))

    def test_Update_ChunkedOrContentLength_LoadsTheModel(self):
        for seed, chunked in ((1, True), (2, False)):
            weights = tensors(seed)
            caller = Worker(lambda: self.post(self.rpc(), chunked=chunked))
            caller.start()
            self.serve_update(weights)
            (status, answer), error = caller.outcome()
            self.assertIsNone(error)
            self.assertEqual(status, 200, answer)
            self.assertEqual(answer["results"][0]["tensors"], 2)
            self.assertHolds(weights)

    def test_SecondUpdateWhileOneRuns_Is409_TheFirstStillCompletes(self):
        weights = tensors(3)
        first = Worker(lambda: self.post(self.rpc(), chunked=True))
        first.start()
        self.ps.accept()  # the first update runs: its worker is connected
        status, answer = self.post(self.rpc())
        self.assertEqual(status, 409)
        self.assertIn("already running", answer["error"])
        self.assertEqual(self.ps.attach(), {"ok": True})
        for m in ({"type": "load", "bucket": 0, "tensors": self.ps.pack(weights)}, {"type": "release"}, {"type": "finish"}):
            self.assertEqual(self.ps.call(m), {"ok": True})
        (status, answer), error = first.outcome()
        self.assertEqual((status, error), (200, None), answer)
        self.assertHolds(weights)

    def test_BadBodies_AreRefusedNamingWhy_WithoutRunningAnything(self):
        post = b"POST /collective_rpc HTTP/1.1\r\nHost: engine\r\n"
        too_big = engine_server.MAX_BODY + 1
        cases = [
            # Bounded: a declared size past the bound is refused before a byte of the body is read (none is sent).
            (post + b"Content-Length: %d\r\n\r\n" % too_big, 413, "over %d" % engine_server.MAX_BODY),
            (post + b"Transfer-Encoding: chunked\r\n\r\n%x\r\n" % too_big, 413, "over %d" % engine_server.MAX_BODY),
            (post + b"Transfer-Encoding: chunked\r\n\r\n" + b"80000\r\n" + b"x" * 0x80000 + b"\r\n" + b"80001\r\n", 413, "over"),
            (post + b"\r\n", 411, "needs a Content-Length or chunked"),
            (post + b"Content-Length: ten\r\n\r\n", 400, "Content-Length 'ten' is not a number"),
            (post + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n", 400, "bad chunk size line b'zz\\r\\n' at body byte 0"),
            (post + b"Transfer-Encoding: chunked\r\n\r\n3\r\n{}}x\r\n0\r\n\r\n", 400, "not followed by CRLF"),
        ]
        for request, status, words in cases:
            with self.subTest(request=request[:80]):
                got, answer = self.raw(request)
                self.assertEqual(got, status, answer)
                self.assertIn(words, answer["error"])
        for body, words in ((b"{\"method\": ", "the body is not JSON"), (b"[1]", "expected {\"method\""),
                            (b"{\"method\": \"sleep\", \"args\": [{}]}", "expected {\"method\""),
                            (self.rpc({"dev-0": 7}), "args[0] must map device ids to tickets")):
            with self.subTest(body=body):
                got, answer = self.post(body, chunked=True)
                self.assertEqual(got, 400, answer)
                self.assertIn(words, answer["error"])
        self.assertEqual(self.raw(b"POST /elsewhere HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}")[0], 404)
        self.assertEqual(self.raw(b"GET /health HTTP/1.1\r\n\r\n"), (200, {}))
        self.assertEqual(self.engine.running, set())  # nothing was started, and nothing is left marked busy

    def test_UpdateNamingOtherDevices_Is400NamingThem(self):
        engine = EngineServer([EngineWorker(self.model, device_id="gpu-a", shard_aware=False), EngineWorker(self.model, device_id="gpu-b", shard_aware=False)])
        self.addCleanup(engine.server_close)
        with self.assertRaisesRegex(LookupError, r"none of this engine's devices \(gpu-a, gpu-b\) is in the update's tickets \(gpu-c\)"):
            engine.update({"gpu-c": self.ps.ticket})


if __name__ == "__main__":
    unittest.main()
