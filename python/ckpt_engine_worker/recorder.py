"""Learns what an engine keeps of each checkpoint tensor by running the engine's own loader once on
stand-in tensors, and loads the declared slices straight into where that loader put them.

A stand-in is a `torch.Tensor` subclass over a meta tensor of the checkpoint tensor's shape (no data,
no memory). Through `__torch_function__` it answers questions about its shape and dtype, follows views
(narrow, select, chunk, split, indexing with ints and slices, transposes, views, dtype conversion) as a
view of the full tensor, and stops at the sink: `param_view.copy_(x)` or `param_view[i] = x`, which is
recorded as (which elements of the checkpoint tensor, which elements of which parameter) and not
executed. Anything else done with a stand-in (arithmetic, concatenation, `.item()`, a copy into
something that is not a parameter) makes that tensor `whole`: the engine's loader then gets it whole,
so correctness never depends on the recorder understanding a loader. Tensors the loader ignores are
`none`.

Loading a part: the load message carries only the declared slices along one dimension, packed. For
every recorded sink the recorder translates the sink's view of the full tensor into the same view of
the part (the index along the sliced dimension shifted by where its slice sits in the part) and copies
it into the recorded view of the parameter: the bytes the loader's narrow would have copied out of the
full tensor, to the same place. The engine's loader is not called for parts (it would narrow a tensor
that is no longer full); it still loads every tensor that arrives whole.
"""

import logging
import threading

import torch

log = logging.getLogger("ckpt_engine_worker")

_METADATA = frozenset((
    "shape", "size", "dim", "ndim", "ndimension", "numel", "nelement", "stride", "is_contiguous", "device",
    "is_cuda", "is_meta", "layout", "requires_grad", "is_floating_point", "is_complex", "names", "is_sparse",
    "is_quantized", "__len__", "dtype", "element_size", "itemsize", "get_device", "storage_offset",
))
_VIEWS = frozenset((
    "narrow", "select", "__getitem__", "t", "T", "transpose", "swapaxes", "permute", "movedim", "view", "view_as",
    "reshape", "flatten", "squeeze", "unsqueeze", "expand", "expand_as", "chunk", "split", "split_with_sizes",
    "tensor_split", "unbind",
))
_SAME_VALUES = frozenset(("contiguous", "clone", "detach", "cpu", "cuda", "requires_grad_", "__torch_function__"))
_CONVERSIONS = {"float": torch.float32, "half": torch.float16, "bfloat16": torch.bfloat16, "double": torch.float64}


class Untraceable(Exception):
    """A loader did something with a stand-in that is not a view or a copy into a parameter."""


def _name(func):
    name = getattr(func, "__name__", "")
    if name in ("__get__", "__set__"):
        return getattr(getattr(func, "__self__", None), "__name__", name)
    return name


def _flat(values):
    for v in values:
        if isinstance(v, (list, tuple)):
            yield from _flat(v)
        else:
            yield v


def _contiguous_strides(shape):
    strides, step = [], 1
    for n in reversed(shape):
        strides.append(step)
        step *= max(n, 1)
    return strides[::-1]


class StandIn(torch.Tensor):
    """A checkpoint tensor as the loader sees it while recording: a view (or dtype conversion) of the
    full tensor `origin`, backed by a meta tensor."""

    @staticmethod
    def make(geom, origin, convert, recording):
        t = torch.Tensor._make_subclass(StandIn, geom)
        t._origin, t._convert, t._recording = origin, convert, recording
        return t

    def _geom(self):
        with torch._C.DisableTorchFunction():
            return self.as_strided(self.size(), self.stride(), self.storage_offset())

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = _name(func)
        ours = [a for a in _flat(list(args) + list(kwargs.values())) if isinstance(a, StandIn)]
        if not ours:
            with torch._C.DisableTorchFunction():
                return func(*args, **kwargs)
        recording = ours[0]._recording
        first = args[0] if args else None
        if name == "copy_" and not isinstance(first, StandIn) and len(ours) == 1:
            recording._sink(first, ours[0])
            return first
        if name == "__setitem__" and not isinstance(first, StandIn) and isinstance(args[2], StandIn) and len(ours) == 1:
            with torch._C.DisableTorchFunction():
                target = first[args[1]]
            recording._sink(target, args[2])
            return None
        if len(ours) == 1 and first is ours[0]:
            me = first
            if name in _METADATA:
                recording.queries += 1
                if me._convert is not None and name in ("dtype", "element_size", "itemsize", "is_floating_point", "is_complex"):
                    probe = torch.empty((), dtype=me._convert, device="meta")
                    with torch._C.DisableTorchFunction():
                        return func(probe, *args[1:], **kwargs)
                with torch._C.DisableTorchFunction():
                    return func(me._geom(), *args[1:], **kwargs)
            if name in _SAME_VALUES:
                return me
            if name in _CONVERSIONS or name in ("to", "type_as", "type"):
                return me._converted(name, args[1:], kwargs)
            if name in _VIEWS:
                return me._view(func, name, args[1:], kwargs)
        recording._untraceable(ours, name)

    def _converted(self, name, rest, kwargs):
        dtype = _CONVERSIONS.get(name)
        if dtype is None:
            for a in list(rest) + list(kwargs.values()):
                if isinstance(a, torch.dtype):
                    dtype = a
                elif isinstance(a, torch.Tensor) and name in ("to", "type_as"):
                    dtype = a.dtype
        if name == "type" and dtype is None:
            self._recording._untraceable([self], name)
        origin_dtype = self._recording.layout[self._origin][0]
        convert = None if dtype is None else (None if dtype == origin_dtype else dtype)
        return StandIn.make(self._geom(), self._origin, convert if dtype is not None else self._convert, self._recording)

    def _view(self, func, name, rest, kwargs):
        if name == "__getitem__":
            index = rest[0] if isinstance(rest[0], tuple) else (rest[0],)
            if not all(i is None or i is Ellipsis or type(i) is int or (isinstance(i, slice) and i.step in (None, 1)) for i in index):
                self._recording._untraceable([self], "indexing with %s" % type(rest[0]).__name__)
        geom = self._geom()
        if name in ("reshape", "flatten") and not geom.is_contiguous():
            self._recording._untraceable([self], name + " of a non-contiguous view")
        if name in ("view", "view_as") and rest and isinstance(rest[0], torch.dtype):
            self._recording._untraceable([self], "view as another dtype")
        try:
            with torch._C.DisableTorchFunction():
                out = func(geom, *rest, **kwargs)
        except (RuntimeError, IndexError, TypeError, ValueError) as e:
            self._recording._untraceable([self], "%s (%s)" % (name, e))
        self._recording.views += 1
        wrap = lambda t: StandIn.make(t, self._origin, self._convert, self._recording)  # noqa: E731
        return type(out)(wrap(t) for t in out) if isinstance(out, (tuple, list)) else wrap(out)


class Sink:
    """One copy the loader made: elements of a checkpoint tensor (a view of its full, contiguous layout:
    offset, sizes, strides) into a view of a parameter (relative offset, sizes, strides)."""

    __slots__ = ("source", "convert", "param", "target", "param_geometry")

    def __init__(self, source, convert, param, target, param_geometry):
        self.source, self.convert, self.param, self.target, self.param_geometry = source, convert, param, target, param_geometry


def extent(source, full_shape):
    """The index range [lo, hi) a view (offset, sizes, strides) of a contiguous tensor of `full_shape`
    covers along each dimension, and which dimension each view dimension walks (None: size 1 or
    broadcast); None when a view dimension does not walk exactly one dimension of the tensor."""
    offset, sizes, strides = source
    full = _contiguous_strides(full_shape)
    index = []
    for n, s in zip(full_shape, full):
        index.append(offset // s % n if n else 0)
    ranges = [[i, i + 1] for i in index]
    walks = []
    for size, stride in zip(sizes, strides):
        if size == 1 or stride == 0 or size == 0:
            walks.append(None)
            continue
        j = next((j for j, (n, s) in enumerate(zip(full_shape, full)) if s == stride and n > 1 and j not in walks), None)
        if j is None or index[j] + size > full_shape[j]:
            return None
        walks.append(j)
        ranges[j][1] = index[j] + size
    return ranges, walks, index


def translate(source, full_shape, dim, slices, part_strides=None):
    """The same view as `source` (of the full tensor) in the part holding `slices` along `dim`: (offset,
    sizes, strides) in the part's elements, laid out with `part_strides` (default: packed, contiguous; a
    part in place has its whole tensor's strides); None when the view leaves its slice."""
    found = extent(source, full_shape)
    if found is None:
        return None
    ranges, walks, index = found
    lo, hi = ranges[dim]
    at = 0
    for start, length in slices:
        if start <= lo and hi <= start + length:
            break
        at += length
    else:
        return None
    part_shape = list(full_shape)
    part_shape[dim] = sum(length for _, length in slices)
    part = list(part_strides) if part_strides is not None else _contiguous_strides(part_shape)
    index = list(index)
    index[dim] = lo - start + at
    offset = sum(i * s for i, s in zip(index, part))
    strides = [0 if j is None else part[j] for j in walks]
    return offset, list(source[1]), strides


class Recording:
    """What one run of a loader over stand-ins showed: per checkpoint tensor, its sinks, or why it is
    kept whole. `wants()` is the declaration; `load_part` loads one part."""

    def __init__(self, layout, module):
        self.layout = layout  # name -> (torch dtype, shape)
        self.sinks = {}
        self.whole = {}
        self.queries = self.views = 0
        self._targets = {}
        for name, t in module.state_dict(keep_vars=True).items():
            self._targets.setdefault(self._storage(t), []).append((name, t))
        self._params = {n: t for ts in self._targets.values() for n, t in ts}

    @staticmethod
    def _storage(t):
        with torch._C.DisableTorchFunction():
            return (t.untyped_storage() if hasattr(t, "untyped_storage") else t.storage()).data_ptr(), t.device

    def _untraceable(self, ours, what):
        for s in ours:
            self.whole.setdefault(s._origin, "the loader used '%s' on it" % what)
        raise Untraceable("%s: %s" % (", ".join(sorted({s._origin for s in ours})), what))

    def _sink(self, target, standin):
        with torch._C.DisableTorchFunction():
            owners = self._targets.get(self._storage(target)) if isinstance(target, torch.Tensor) else None
            param = next(((n, p) for n, p in owners if p.dtype == target.dtype), None) if owners else None
            if param is None:
                self.whole.setdefault(standin._origin, "the loader copied it into something that is not a parameter or buffer")
                raise Untraceable(standin._origin + ": copied into something that is not a parameter")
            name, p = param
            geom = standin._geom()
            source = (geom.storage_offset(), list(geom.size()), list(geom.stride()))
            where = (target.storage_offset() - p.storage_offset(), list(target.size()), list(target.stride()))
            shape = (tuple(p.shape), tuple(p.stride()), p.dtype)
        self.sinks.setdefault(standin._origin, []).append(Sink(source, standin._convert, name, where, shape))

    def wants(self):
        """{name: "whole" | "none" | {"dim": d, "slices": [[start, length], ...]}} for every tensor of the layout."""
        out = {}
        for name, (dtype, shape) in self.layout.items():
            out[name] = self._want(name, shape)
        return out

    def _want(self, name, shape):
        if name in self.whole:
            return "whole"
        sinks = self.sinks.get(name)
        if not sinks:
            return "none"
        if not shape or 0 in shape:
            return "whole"
        spans = []
        for sink in sinks:
            found = extent(sink.source, shape)
            if found is None:
                self.whole[name] = "a copy reads it along no single dimension"
                return "whole"
            spans.append(found[0])
        best = None
        for d, n in enumerate(shape):
            merged = []
            for lo, hi in sorted(s[d] for s in spans):
                if merged and lo <= merged[-1][1]:
                    merged[-1][1] = max(merged[-1][1], hi)
                else:
                    merged.append([lo, hi])
            kept = sum(hi - lo for lo, hi in merged)
            if kept < n and (best is None or kept < best[0]):
                best = (kept, d, merged)
        if best is None:
            return "whole"
        return {"dim": best[1], "slices": [[lo, hi - lo] for lo, hi in best[2]]}

    def load_part(self, name, part, dim, slices):
        """Copies every recorded sink of `name` out of `part` (its slices along `dim`, packed, or in place
        inside the whole tensor: read through its strides, no copy first) into the parameters; raises naming
        the tensor when the part does not hold a sink's elements or a parameter changed since recording."""
        sinks = self.sinks.get(name)
        if not sinks:
            raise LookupError("tensor '%s' arrived as a part, but its loader was not recorded copying it" % name)
        full_shape = list(self.layout[name][1])
        with torch.no_grad():
            for sink in sinks:
                source = translate(sink.source, full_shape, dim, slices, part.stride())
                if source is None:
                    raise ValueError("tensor '%s': the part (dimension %d, slices %s) does not hold what its loader copies into '%s'"
                                     % (name, dim, slices, sink.param))
                p = self._params[sink.param]
                if (tuple(p.shape), tuple(p.stride()), p.dtype) != sink.param_geometry:
                    raise ValueError("parameter '%s' is %s %s now, %s %s when its loader was recorded (the model changed: record again)" % (
                        sink.param, p.dtype, tuple(p.shape), sink.param_geometry[2], sink.param_geometry[0]))
                src = part.as_strided(source[1], source[2], part.storage_offset() + source[0])
                if sink.convert is not None:
                    src = src.to(sink.convert)
                rel, sizes, strides = sink.target
                p.data.as_strided(sizes, strides, p.storage_offset() + rel).copy_(src)


_recording_lock = threading.Lock()


def record(module, load, layout):
    """Runs `load(weights)` (the engine's loader, e.g. `model.load_weights`) over stand-ins of every
    tensor of `layout` ({name: (dtype name or torch dtype, shape)}) and returns the Recording. Loader
    failures caused by a stand-in make the tensors involved `whole` (one log line each) and the run
    goes on with the next tensor. The module's parameters are not written by the recorder."""
    from . import dtypes

    layout = {n: (dtypes.torch_dtype(d) if isinstance(d, str) else d, tuple(int(x) for x in s)) for n, (d, s) in layout.items()}
    recording = Recording(layout, module)
    queue = list(layout)
    with _recording_lock:  # One recording at a time: stand-ins carry no data, but loaders may keep state.
        while queue:
            batch, yielded = [n for n in queue if n not in recording.whole], []

            def weights():
                for name in batch:
                    dtype, shape = layout[name]
                    yielded.append(name)
                    yield name, StandIn.make(torch.empty(shape, dtype=dtype, device="meta"), name, None, recording)

            try:
                load(weights())
                queue = []
            except Exception as e:  # noqa: BLE001 - a loader the stand-ins cannot follow: those tensors go whole
                if not isinstance(e, Untraceable):
                    for n in yielded[-1:] or batch:  # The tensor it was at (or all, when it failed before any).
                        recording.whole.setdefault(n, "the loader raised %s: %s" % (type(e).__name__, e))
                # Tensors it passed over may have been held for later: they are fed again in the next run.
                queue = [n for n in yielded if n not in recording.sinks and n not in recording.whole] + batch[len(yielded):]
    for name, why in sorted(recording.whole.items()):
        if name in layout:
            log.warning("shard-aware: tensor '%s' is kept whole: %s", name, why)
    return recording
