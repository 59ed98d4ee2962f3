"""Safetensors dtype names (as the wire protocol carries them) and their torch dtypes.

Sizes are known for every name, so a message is checked even where the installed torch lacks the
dtype; asking for such a tensor is an UnsupportedDType error that names the tensor and the dtype.
"""

import torch

# name: (bits per element, torch attribute). Sub-byte formats have no torch dtype with this layout.
_TABLE = {
    "BOOL": (8, "bool"),
    "U8": (8, "uint8"),
    "I8": (8, "int8"),
    "F8_E5M2": (8, "float8_e5m2"),
    "F8_E4M3": (8, "float8_e4m3fn"),
    "F8_E8M0": (8, "float8_e8m0fnu"),
    "F8_E4M3FNUZ": (8, "float8_e4m3fnuz"),
    "F8_E5M2FNUZ": (8, "float8_e5m2fnuz"),
    "I16": (16, "int16"),
    "U16": (16, "uint16"),
    "F16": (16, "float16"),
    "BF16": (16, "bfloat16"),
    "I32": (32, "int32"),
    "U32": (32, "uint32"),
    "F32": (32, "float32"),
    "C64": (64, "complex64"),
    "F64": (64, "float64"),
    "I64": (64, "int64"),
    "U64": (64, "uint64"),
    "F4": (4, None),
    "F6_E2M3": (6, None),
    "F6_E3M2": (6, None),
}

NAMES = tuple(_TABLE)


class UnsupportedDType(ValueError):
    """The dtype is valid on the wire but the installed torch has no such dtype."""


def _entry(name):
    try:
        return _TABLE[name]
    except (KeyError, TypeError):
        raise ValueError("unknown dtype %r" % (name,)) from None


def _attribute(name):
    return _entry(name)[1]


def is_supported(name):
    """Whether the installed torch has a dtype for this wire name."""
    attr = _attribute(name)
    return attr is not None and isinstance(getattr(torch, attr, None), torch.dtype)


def supported_names():
    """The wire names this torch can turn into tensors."""
    return tuple(n for n in NAMES if is_supported(n))


def torch_dtype(name):
    """The torch dtype for a wire name; UnsupportedDType when this torch has none."""
    attr = _attribute(name)
    dtype = getattr(torch, attr, None) if attr else None
    if not isinstance(dtype, torch.dtype):
        raise UnsupportedDType("dtype %s is not supported by torch %s%s" % (
            name, torch.__version__, " (it has no torch.%s)" % attr if attr else " (sub-byte format)"))
    return dtype


def wire_name(dtype):
    """The wire name of a torch dtype (for writing safetensors files)."""
    for name, (_, attr) in _TABLE.items():
        if attr and getattr(torch, attr, None) == dtype:
            return name
    raise ValueError("torch dtype %s has no safetensors name" % dtype)


def item_size(name):
    """Bytes per element (for alignment); 1 for sub-byte formats."""
    return max(1, _entry(name)[0] // 8)


def byte_length(name, shape):
    """Bytes of a tensor of this dtype and shape; ValueError says why a shape is invalid."""
    bits = _entry(name)[0]
    if not isinstance(shape, (list, tuple)) or any(type(d) is not int or d < 0 for d in shape):
        raise ValueError("shape %r is not a list of non-negative integers" % (shape,))
    count = 1
    for d in shape:
        count *= d
    if count * bits % 8:
        raise ValueError("%d elements of %s (%d bits each) do not fill whole bytes" % (count, name, bits))
    return count * bits // 8
