import os
import socket
import struct
import unittest
from unittest import mock

from ckpt_engine_worker import protocol


class FramingTests(unittest.TestCase):
    def setUp(self):
        self.a, self.b = socket.socketpair()
        self.addCleanup(self.a.close)
        self.addCleanup(self.b.close)

    def test_RoundTrip_KeepsUnicodeAndTypes(self):
        message = {"type": "abort", "reason": "größe ✓"}
        protocol.send(self.a, message, 5)
        self.assertEqual(protocol.decode(protocol.read_frame(self.b, 5)), message)

    def test_Encode_IsLittleEndianLengthThenJson(self):
        frame = protocol.encode({"ok": True})
        self.assertEqual(frame, struct.pack("<i", 11) + b'{"ok":true}')

    def test_ReadFrame_CleanCloseBetweenFrames_IsNone(self):
        self.a.close()
        self.assertIsNone(protocol.read_frame(self.b, 5))

    def test_ReadFrame_CloseInsideFrame_SaysHowFar(self):
        self.a.sendall(struct.pack("<i", 10) + b"{}")
        self.a.close()
        with self.assertRaisesRegex(protocol.ProtocolError, r"inside a frame \(2 of 10 bytes\)"):
            protocol.read_frame(self.b, 5)

    def test_ReadFrame_CloseInsideLength(self):
        self.a.sendall(b"\x01\x00")
        self.a.close()
        with self.assertRaisesRegex(protocol.ProtocolError, r"frame length \(2 of 4 bytes\)"):
            protocol.read_frame(self.b, 5)

    def test_ReadFrame_BadLength_IsRejected(self):
        for length in (-1, 0, 1, protocol.MAX_FRAME + 1):
            a, b = socket.socketpair()
            with a, b:
                a.sendall(struct.pack("<i", length))
                with self.assertRaisesRegex(protocol.ProtocolError, "outside"):
                    protocol.read_frame(b, 5)

    def test_ReadFrame_Silence_TimesOut(self):
        with self.assertRaises(socket.timeout):
            protocol.read_frame(self.b, 0.05)

    def test_Decode_RejectsNonObjectsAndUnknownTypes(self):
        with self.assertRaisesRegex(protocol.ProtocolError, "not valid JSON"):
            protocol.decode(b"{nope")
        with self.assertRaisesRegex(protocol.ProtocolError, "not an object"):
            protocol.decode(b"[1]")
        with self.assertRaisesRegex(protocol.ProtocolError, "'upload' is not one of"):
            protocol.decode(b'{"type":"upload"}')


class AddressTests(unittest.TestCase):
    def test_AddressFor_IsAbstractAndSanitised(self):
        with mock.patch.dict(os.environ, {}, clear=False):
            os.environ.pop(protocol.SOCKET_DIR_VARIABLE, None)
            self.assertEqual(protocol.address_for("GPU-ab/c d"), "@ckpt-engine-GPU-ab_c_d")

    def test_AddressFor_WithSocketDir_IsAFile(self):
        with mock.patch.dict(os.environ, {protocol.SOCKET_DIR_VARIABLE: "/run/x"}):
            self.assertEqual(protocol.address_for("host-a-0"), "/run/x/ckpt-engine-host-a-0.sock")

    def test_Endpoint_AbstractGetsNulPrefix(self):
        self.assertEqual(protocol.endpoint("@name"), "\0name")
        self.assertEqual(protocol.endpoint("/tmp/s.sock"), "/tmp/s.sock")

    def test_Connect_NothingListening_GivesUpAtTheDeadline(self):
        with self.assertRaisesRegex(protocol.PeerClosed, "no parameter server listening at @ckpt-test-none within 0.2 s"):
            protocol.connect("@ckpt-test-none", 0.2)


if __name__ == "__main__":
    unittest.main()
