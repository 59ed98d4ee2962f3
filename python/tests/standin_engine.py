"""A stand-in tensor-parallel engine whose layers load weights the way vLLM's do (written for these
tests): packed QKV with fewer K/V heads (replicated over ranks when TP exceeds them), merged gate/up,
row-parallel output and down projections, vocabulary-parallel embedding and LM head with padding, a
fused-MoE layer whose ranks hold different experts, replicated norms, block-scaled FP8 projections
(the FP8 bytes as U8: torch 1.13 has no float8), a loader that computes on its tensor (the recorder
cannot follow it: kept whole), and a checkpoint tensor the loader ignores.

`checkpoint(seed)` is the full checkpoint (HF-style names); `Model(tp_rank, tp_size)` is one rank's
model; `Model.load_weights(weights)` routes names like vLLM's (stacked params, expert mapping).
"""

import torch

VOCAB, HIDDEN, HEADS, KV_HEADS, HEAD_DIM, INTERMEDIATE = 250, 64, 8, 2, 8, 96
EXPERTS, EXPERT_INTERMEDIATE, FP8_ROWS, BLOCK, LAYERS = 4, 32, 128, 32, 2
VOCAB_PAD = 64  # the vocabulary is padded to a multiple of this, then split evenly over ranks


def scale(k):
    """Multiplies the widths (vocabulary, hidden, head and intermediate sizes) by k, for measurements."""
    global VOCAB, HIDDEN, HEAD_DIM, INTERMEDIATE, EXPERT_INTERMEDIATE, FP8_ROWS
    VOCAB, HIDDEN, HEAD_DIM, INTERMEDIATE = VOCAB * k, HIDDEN * k, HEAD_DIM * k, INTERMEDIATE * k
    EXPERT_INTERMEDIATE, FP8_ROWS = EXPERT_INTERMEDIATE * k, FP8_ROWS * k


def _padded_vocab():
    return (VOCAB + VOCAB_PAD - 1) // VOCAB_PAD * VOCAB_PAD


def checkpoint(seed):
    """Every tensor of the full checkpoint, random bytes (deterministic per seed)."""
    shapes = {"model.embed_tokens.weight": ((VOCAB, HIDDEN), torch.bfloat16), "model.norm.weight": ((HIDDEN,), torch.float32),
              "lm_head.weight": ((VOCAB, HIDDEN), torch.bfloat16)}
    for i in range(LAYERS):
        p = "model.layers.%d." % i
        shapes.update({
            p + "input_layernorm.weight": ((HIDDEN,), torch.float32),
            p + "post_attention_layernorm.weight": ((HIDDEN,), torch.float32),
            p + "self_attn.q_proj.weight": ((HEADS * HEAD_DIM, HIDDEN), torch.bfloat16),
            p + "self_attn.k_proj.weight": ((KV_HEADS * HEAD_DIM, HIDDEN), torch.bfloat16),
            p + "self_attn.v_proj.weight": ((KV_HEADS * HEAD_DIM, HIDDEN), torch.bfloat16),
            p + "self_attn.o_proj.weight": ((HIDDEN, HEADS * HEAD_DIM), torch.bfloat16),
            p + "self_attn.rotary_emb.inv_freq": ((HEAD_DIM // 2,), torch.float32),
        })
        if i == 0:
            shapes.update({p + "mlp.gate_proj.weight": ((INTERMEDIATE, HIDDEN), torch.bfloat16),
                           p + "mlp.up_proj.weight": ((INTERMEDIATE, HIDDEN), torch.bfloat16),
                           p + "mlp.down_proj.weight": ((HIDDEN, INTERMEDIATE), torch.bfloat16)})
        else:
            shapes.update({p + "mlp.gate.weight": ((EXPERTS, HIDDEN), torch.float32),
                           p + "mlp.gate.e_score_correction_bias": ((EXPERTS,), torch.float32),
                           p + "mlp.shared_expert.fc_in.weight": ((FP8_ROWS, HIDDEN), torch.uint8),
                           p + "mlp.shared_expert.fc_in.weight_scale_inv": ((FP8_ROWS // BLOCK, HIDDEN // BLOCK), torch.float32),
                           p + "mlp.shared_expert.fc_out.weight": ((HIDDEN, FP8_ROWS), torch.uint8),
                           p + "mlp.shared_expert.fc_out.weight_scale_inv": ((HIDDEN // BLOCK, FP8_ROWS // BLOCK), torch.float32)})
            for e in range(EXPERTS):
                q = p + "mlp.experts.%d." % e
                shapes.update({q + "gate_proj.weight": ((EXPERT_INTERMEDIATE, HIDDEN), torch.bfloat16),
                               q + "up_proj.weight": ((EXPERT_INTERMEDIATE, HIDDEN), torch.bfloat16),
                               q + "down_proj.weight": ((HIDDEN, EXPERT_INTERMEDIATE), torch.bfloat16)})
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, (shape, dtype) in sorted(shapes.items()):
        t = torch.empty(shape, dtype=dtype)
        raw = t.view(-1).view(torch.uint8)
        raw.copy_(torch.randint(0, 256, raw.shape, dtype=torch.uint8, generator=g))
        if dtype.is_floating_point:  # No NaN or Inf patterns: the computing loader must compare equal.
            t.copy_(torch.randn(shape, generator=g).to(dtype))
        out[name] = t
    return out


def _param(shape, dtype, loader):
    p = torch.nn.Parameter(torch.zeros(shape, dtype=dtype), requires_grad=False)
    p.weight_loader = loader
    return p


def default_weight_loader(param, w):
    param.data.copy_(w)


class Column(torch.nn.Module):
    """Column-parallel: each rank keeps rows rank*n..(rank+1)*n of the weight (and of its block scales)."""

    def __init__(self, rows, cols, dtype, rank, tp, block=None):
        super().__init__()
        self.rank = rank
        self.weight = _param((rows // tp, cols), dtype, self.load)
        if block:
            self.weight_scale_inv = _param((rows // tp // block, cols // block), torch.float32, self.load)

    def load(self, param, w):
        n = param.shape[0]
        param.data.copy_(w.narrow(0, self.rank * n, n))


class Row(torch.nn.Module):
    """Row-parallel: each rank keeps its columns of the weight (and of its block scales)."""

    def __init__(self, rows, cols, dtype, rank, tp, block=None):
        super().__init__()
        self.rank = rank
        self.weight = _param((rows, cols // tp), dtype, self.load)
        if block:
            self.weight_scale_inv = _param((rows // block, cols // tp // block), torch.float32, self.load)

    def load(self, param, w):
        n = param.shape[1]
        param.data.copy_(w.narrow(1, self.rank * n, n))


class QKV(torch.nn.Module):
    """Packed q, k, v rows of this rank's heads; K/V heads are replicated when TP exceeds them."""

    def __init__(self, rank, tp):
        super().__init__()
        self.rank, self.tp = rank, tp
        self.heads, self.kv_heads = HEADS // tp, max(1, KV_HEADS // tp)
        self.weight = _param(((self.heads + 2 * self.kv_heads) * HEAD_DIM, HIDDEN), torch.bfloat16, self.load)

    def load(self, param, w, shard):
        q, kv = self.heads * HEAD_DIM, self.kv_heads * HEAD_DIM
        offset, size = {"q": (0, q), "k": (q, kv), "v": (q + kv, kv)}[shard]
        index = self.rank if shard == "q" else self.rank // max(1, self.tp // KV_HEADS)
        param.data.narrow(0, offset, size).copy_(w.narrow(0, index * size, size))


class GateUp(torch.nn.Module):
    """Merged gate and up rows of this rank."""

    def __init__(self, rank, tp):
        super().__init__()
        self.rank, self.size = rank, INTERMEDIATE // tp
        self.weight = _param((2 * self.size, HIDDEN), torch.bfloat16, self.load)

    def load(self, param, w, shard):
        param.data.narrow(0, shard * self.size, self.size).copy_(w.narrow(0, self.rank * self.size, self.size))


class VocabParallel(torch.nn.Module):
    """This rank's rows of the padded vocabulary; the padding rows are zero."""

    def __init__(self, rank, tp):
        super().__init__()
        self.per_rank = _padded_vocab() // tp
        self.start = rank * self.per_rank
        self.weight = _param((self.per_rank, HIDDEN), torch.bfloat16, self.load)

    def load(self, param, w):
        n = max(0, min(self.per_rank, w.shape[0] - self.start))
        param.data[:n].copy_(w.narrow(0, self.start, n))
        param.data[n:].fill_(0)


class FusedMoE(torch.nn.Module):
    """Experts stacked per rank (expert parallel: rank r holds experts r*E/tp ..); w13 is gate then up."""

    def __init__(self, rank, tp):
        super().__init__()
        self.local = EXPERTS // tp
        self.first = rank * self.local
        self.w13_weight = _param((self.local, 2 * EXPERT_INTERMEDIATE, HIDDEN), torch.bfloat16, self.load)
        self.w2_weight = _param((self.local, HIDDEN, EXPERT_INTERMEDIATE), torch.bfloat16, self.load)

    def load(self, param, w, shard, expert):
        local = expert - self.first
        if not 0 <= local < self.local:
            return
        target = param.data[local]
        if shard == "w1":
            target.narrow(0, 0, EXPERT_INTERMEDIATE).copy_(w)
        elif shard == "w3":
            target.narrow(0, EXPERT_INTERMEDIATE, EXPERT_INTERMEDIATE).copy_(w)
        else:
            target.copy_(w)


class Scaled(torch.nn.Module):
    """A loader that computes on its tensor (the recorder cannot follow it)."""

    def __init__(self):
        super().__init__()
        self.e_score_correction_bias = _param((EXPERTS,), torch.float32, self.load)

    def load(self, param, w):
        param.data.copy_(w.float() * 1.0)


class Layer(torch.nn.Module):
    def __init__(self, i, rank, tp):
        super().__init__()
        self.input_layernorm = torch.nn.Module()
        self.input_layernorm.weight = _param((HIDDEN,), torch.float32, default_weight_loader)
        self.post_attention_layernorm = torch.nn.Module()
        self.post_attention_layernorm.weight = _param((HIDDEN,), torch.float32, default_weight_loader)
        self.self_attn = torch.nn.Module()
        self.self_attn.qkv_proj = QKV(rank, tp)
        self.self_attn.o_proj = Row(HIDDEN, HEADS * HEAD_DIM, torch.bfloat16, rank, tp)
        self.mlp = torch.nn.Module()
        if i == 0:
            self.mlp.gate_up_proj = GateUp(rank, tp)
            self.mlp.down_proj = Row(HIDDEN, INTERMEDIATE, torch.bfloat16, rank, tp)
        else:
            self.mlp.gate = Scaled()
            self.mlp.gate.weight = _param((EXPERTS, HIDDEN), torch.float32, default_weight_loader)
            self.mlp.experts = FusedMoE(rank, tp)
            self.mlp.shared_expert = torch.nn.Module()
            self.mlp.shared_expert.fc_in = Column(FP8_ROWS, HIDDEN, torch.uint8, rank, tp, block=BLOCK)
            self.mlp.shared_expert.fc_out = Row(HIDDEN, FP8_ROWS, torch.uint8, rank, tp, block=BLOCK)


class Model(torch.nn.Module):
    """One tensor-parallel rank of the stand-in engine."""

    STACKED = [("qkv_proj", "q_proj", "q"), ("qkv_proj", "k_proj", "k"), ("qkv_proj", "v_proj", "v"),
               ("gate_up_proj", "gate_proj", 0), ("gate_up_proj", "up_proj", 1)]

    def __init__(self, rank=0, tp=1):
        super().__init__()
        self.model = torch.nn.Module()
        self.model.embed_tokens = VocabParallel(rank, tp)
        self.model.layers = torch.nn.ModuleList(Layer(i, rank, tp) for i in range(LAYERS))
        self.model.norm = torch.nn.Module()
        self.model.norm.weight = _param((HIDDEN,), torch.float32, default_weight_loader)
        self.lm_head = VocabParallel(rank, tp)
        self.loaded = 0

    def load_weights(self, weights):
        params = dict(self.named_parameters())
        for name, w in weights:
            if "rotary_emb.inv_freq" in name:
                continue
            self.loaded += 1
            if ".experts." in name:
                prefix, rest = name.split(".experts.", 1)
                expert, kind, _ = rest.split(".", 2)
                shard = {"gate_proj": "w1", "up_proj": "w3", "down_proj": "w2"}[kind]
                param = params[prefix + ".experts." + ("w2_weight" if shard == "w2" else "w13_weight")]
                param.weight_loader(param, w, shard, int(expert))
                continue
            for stacked, part, shard in self.STACKED:
                if "." + part + "." in name:
                    param = params[name.replace(part, stacked)]
                    param.weight_loader(param, w, shard)
                    break
            else:
                param = params[name]
                param.weight_loader(param, w)
