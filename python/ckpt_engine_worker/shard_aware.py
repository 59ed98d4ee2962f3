"""Shard-aware receiving for a PyTorch engine: the first update delivers everything and shows the
checkpoint's layout; the engine's loaders are then recorded once (recorder.py) and every later update
declares only what they keep. A failed update forgets the declaration (the checkpoint may have
changed): the next one delivers everything and shows the layout again.
"""

from .receiver import receive_update
from .recorder import log, record


def merge(a, b):
    """One declaration for two loaders fed by the same worker (a model and its drafter)."""
    if a == "none":
        return b
    if b == "none" or a == b:
        return a
    if a == "whole" or b == "whole" or a["dim"] != b["dim"]:
        return "whole"
    spans = sorted([s, s + n] for s, n in a["slices"] + b["slices"])
    merged = [spans[0]]
    for lo, hi in spans[1:]:
        if lo <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    return {"dim": a["dim"], "slices": [[lo, hi - lo] for lo, hi in merged]}


class ShardAware:
    """Receives updates into one worker's models, declaring what their loaders keep once it can.

    targets: [(module, load)] — each module with the loader that fills it (e.g. a vLLM model and its
    `load_weights`). `recordings` holds one Recording per target once recorded."""

    def __init__(self, targets):
        self.targets = list(targets)
        self.layout = None
        self.recordings = None
        self.declared = None
        self.unrecordable = None  # Why the loaders could not be recorded: this worker then receives every byte.
        self.parts_in_place = 0  # Parts the last update handed where they lie in the owners' memory (strided views), not packed.

    def wants(self):
        """The wants frame for the next update, or None while the layout is unknown."""
        if self.layout is None or self.unrecordable is not None:
            return None
        if self.recordings is None:
            try:
                self.recordings = [record(module, load, self.layout) for module, load in self.targets]
            except Exception as e:  # Correctness never depends on the recorder: declare nothing, receive everything.
                self.unrecordable = "%s: %s" % (type(e).__name__, e)
                log.warning("shard-aware: the loaders cannot be recorded (%s); this worker receives every byte", self.unrecordable)
                return None
            tensors = {}
            for r in self.recordings:
                for name, want in r.wants().items():
                    tensors[name] = merge(tensors.get(name, "none"), want)
            self.declared = {"others": "whole", "tensors": tensors}
        return self.declared

    def wanted_bytes(self):
        """The bytes the declaration names (what a shard-aware update delivers), from the layout."""
        total = 0
        for name, (dtype, shape) in self.layout.items():
            want = self.declared["tensors"].get(name, "whole")
            size = dtype.itemsize if hasattr(dtype, "itemsize") else _itemsize(dtype)
            count = 1
            for i, n in enumerate(shape):
                count *= sum(s[1] for s in want["slices"]) if isinstance(want, dict) and i == want["dim"] else n
            total += 0 if want == "none" else count * size
        return total

    def receive(self, ticket, finish=None, device=None, idle_timeout=None):
        """Receives one update (see receive_update) and returns its summary."""
        wants = self.wants()
        seen = {}
        self.parts_in_place = 0

        def load(weights):
            if wants is None:
                seen.update((n, (t.dtype, tuple(t.shape))) for n, t in weights)
            whole = [(n, t) for n, t in weights if n not in weights.parts]
            for i, (module, loader) in enumerate(self.targets):
                if whole:
                    loader(whole)
                if weights.parts:
                    recording = self.recordings[i]
                    for name, t in weights:
                        if name in weights.parts and recording.sinks.get(name):
                            dim, slices, _ = weights.parts[name]
                            recording.load_part(name, t, dim, slices)
                            self.parts_in_place += 0 if i or t.is_contiguous() else 1

        try:
            # Parts are copied by load_part through their strides: column slices may stay where they lie (strided).
            summary = receive_update(ticket, load, finish, device=device, idle_timeout=idle_timeout, wants=wants, strided=True)
        except BaseException:
            self.layout = self.recordings = self.declared = None
            raise
        if wants is None and summary.buckets > 0:  # A prepare moves nothing: the layout is still to be seen.
            self.layout = seen
        return summary


def _itemsize(dtype):
    import torch

    return torch.empty((), dtype=dtype).element_size()
