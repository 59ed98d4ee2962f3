import unittest

import torch

from ckpt_engine_worker import dtypes


class DTypeTests(unittest.TestCase):
    def test_EveryWireName_HasASize(self):
        self.assertEqual(dtypes.byte_length("BF16", [2, 3]), 12)
        self.assertEqual(dtypes.byte_length("F64", []), 8)
        self.assertEqual(dtypes.byte_length("F4", [4]), 2)
        self.assertEqual(dtypes.byte_length("I8", [0, 7]), 0)
        for name in dtypes.NAMES:
            self.assertGreaterEqual(dtypes.item_size(name), 1)

    def test_ByteLength_BadShapes_SayWhy(self):
        with self.assertRaisesRegex(ValueError, "not a list of non-negative integers"):
            dtypes.byte_length("F32", [2, -1])
        with self.assertRaisesRegex(ValueError, "not a list"):
            dtypes.byte_length("F32", "2x2")
        with self.assertRaisesRegex(ValueError, "do not fill whole bytes"):
            dtypes.byte_length("F4", [3])
        with self.assertRaisesRegex(ValueError, "unknown dtype 'F128'"):
            dtypes.byte_length("F128", [1])

    def test_TheCommonDTypes_AreSupportedEverywhere(self):
        for name in ("BOOL", "U8", "I8", "I16", "I32", "I64", "F16", "BF16", "F32", "F64"):
            self.assertTrue(dtypes.is_supported(name), name)
            self.assertEqual(dtypes.wire_name(dtypes.torch_dtype(name)), name)
            self.assertEqual(torch.empty(0, dtype=dtypes.torch_dtype(name)).element_size(), dtypes.item_size(name))

    def test_Float8_FollowsTheTorchVersion(self):
        self.assertEqual(dtypes.is_supported("F8_E4M3"), hasattr(torch, "float8_e4m3fn"))
        if not hasattr(torch, "float8_e4m3fn"):
            with self.assertRaisesRegex(dtypes.UnsupportedDType, r"F8_E4M3 is not supported by torch .* no torch.float8_e4m3fn"):
                dtypes.torch_dtype("F8_E4M3")

    def test_SubByteFormats_AreUnsupported(self):
        with self.assertRaisesRegex(dtypes.UnsupportedDType, "sub-byte"):
            dtypes.torch_dtype("F4")


if __name__ == "__main__":
    unittest.main()
