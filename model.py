"""Qwen2, the decoder of DeepSeek-R1-Distill-Qwen and Qwen2.5, from scratch, with Hugging Face checkpoint I/O.

One file that reads like the architecture: RMSNorm -> rotary embeddings -> grouped-query attention
(q/k/v with bias, o without) -> SwiGLU MLP -> decoder block -> model, then a KV cache that lets every
sequence of a batch have its own length, then safetensors loading and saving in the HF layout.

    model = Qwen2.from_pretrained("path/to/DeepSeek-R1-Distill-Qwen-7B", device="cuda", dtype=torch.bfloat16)
    logits = model(input_ids)                                # (B, T, vocab)
    model.save_pretrained("out/")                            # loads in transformers too

Simplified relative to transformers: no sliding-window attention and no rope scaling (neither is used
by R1-Distill-Qwen or Qwen2.5 at these lengths; a config asking for them is rejected, not ignored).
Attention goes through kernels/attention.py and kernels/decode.py (Triton for CUDA tensors, PyTorch otherwise).
Benchmark against transformers: `python bench/bench_model.py`.
"""
import json
import math
import os
import re
import shutil
from dataclasses import asdict, dataclass, field, fields

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from kernels.attention import attention
from kernels.decode import decode_attention
from kernels.logprobs import masked_logprobs


# -----------------------------------------------------------------------------
# Config: field names are those of the Hugging Face config.json

# What Qwen2Config.error() checks each field for (config.json's names)
POSITIVE_INT_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                       "num_key_value_heads", "max_position_embeddings")
POSITIVE_FLOAT_FIELDS = ("rope_theta", "rms_norm_eps")


@dataclass
class Qwen2Config:
    vocab_size: int = 151936
    hidden_size: int = 1536
    intermediate_size: int = 8960
    num_hidden_layers: int = 28
    num_attention_heads: int = 12
    num_key_value_heads: int = 2
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 131072
    initializer_range: float = 0.02
    bos_token_id: int | None = None
    eos_token_id: int | list | None = None
    extra: dict = field(default_factory=dict)  # other config.json keys, kept so a save round-trips them

    @property
    def head_dim(self):
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_dict(cls, d, source="config"):
        d = dict(d)
        # transformers >= 5 nests rope_theta in rope_parameters; older files keep it at top level.
        rope = d.pop("rope_parameters", None) or {}
        if "rope_theta" not in d and "rope_theta" in rope:
            d["rope_theta"] = rope["rope_theta"]
        if rope.get("rope_type", "default") != "default" or d.get("rope_scaling"):
            raise NotImplementedError(f"{source}: rope scaling {rope or d.get('rope_scaling')} is not supported")
        if d.get("use_sliding_window"):
            raise NotImplementedError(f"{source}: sliding-window attention is not supported")
        if d.get("hidden_act", "silu") != "silu":
            raise NotImplementedError(f"{source}: hidden_act {d['hidden_act']!r} is not supported (Qwen2 uses silu)")
        names = {f.name for f in fields(cls)} - {"extra"}
        cfg = cls(**{k: v for k, v in d.items() if k in names},
                  extra={k: v for k, v in d.items() if k not in names and k != "rope_scaling"})
        err = cfg.error()
        if err:
            raise ValueError(f"{source}: {err}")
        return cfg

    def error(self):
        """The first field whose value cannot make a Qwen2, as text naming it and the value, or None. Checked
        on load, before any tensor exists: a 0 or a string would otherwise fail deep inside a layer, and a
        float where an int belongs would build a model of another size."""
        def bad(name, want):
            return f"field {name!r} is {json.dumps(getattr(self, name))}: {want}"
        for name in POSITIVE_INT_FIELDS:
            v = getattr(self, name)
            if type(v) is not int or v < 1:  # type(): JSON true is a bool, which Python counts as an int
                return bad(name, "should be a positive integer")
        for name in POSITIVE_FLOAT_FIELDS:
            v = getattr(self, name)
            if type(v) not in (int, float) or not math.isfinite(v) or v <= 0:
                return bad(name, "should be a finite positive number")
        v = self.initializer_range
        if type(v) not in (int, float) or not math.isfinite(v) or v < 0:
            return bad("initializer_range", "should be a finite number >= 0")
        if type(self.tie_word_embeddings) is not bool:
            return bad("tie_word_embeddings", "should be true or false")
        if self.hidden_size % self.num_attention_heads:
            return bad("hidden_size", f"should be a multiple of num_attention_heads ({self.num_attention_heads})")
        if self.head_dim % 2:  # rotary embeddings rotate pairs of dimensions
            return bad("hidden_size", f"over num_attention_heads ({self.num_attention_heads}) gives an odd head "
                                      f"dimension {self.head_dim}; rotary embeddings need an even one")
        if self.num_attention_heads % self.num_key_value_heads:
            return bad("num_key_value_heads", f"should divide num_attention_heads ({self.num_attention_heads})")
        for name in ("bos_token_id", "eos_token_id"):
            v = getattr(self, name)
            ids = v if isinstance(v, list) and name == "eos_token_id" else [v] if v is not None else []
            if not all(type(i) is int and 0 <= i < self.vocab_size for i in ids):
                return bad(name, f"should be a token id in [0, vocab_size {self.vocab_size})"
                           + (", a list of them," if name == "eos_token_id" else "") + " or null")
        return None

    @classmethod
    def from_json(cls, path):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: config.json not found")
        with open(path, "rb") as f:
            try:
                d = json.loads(f.read().decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise ValueError(f"{path}: invalid JSON ({e})") from None
        if not isinstance(d, dict):
            raise ValueError(f"{path}: should hold a JSON object, got {type(d).__name__}")
        return cls.from_dict(d, source=path)

    def to_dict(self):
        d = {k: v for k, v in asdict(self).items() if k != "extra"}
        d.update(self.extra)
        d.update(architectures=["Qwen2ForCausalLM"], model_type="qwen2", hidden_act="silu",
                 use_sliding_window=False, rope_scaling=None,
                 rope_parameters={"rope_type": "default", "rope_theta": self.rope_theta})
        return d


# -----------------------------------------------------------------------------
# The architecture

class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        dtype = x.dtype
        x = x.float()  # the variance in fp32, as Qwen2 does, then weight * x in the input dtype
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def rope_cos_sin(positions, head_dim, theta, dtype):
    """cos, sin (B, T, head_dim) for integer positions (B, T); frequencies in fp32 ("rotate_half" layout)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=positions.device).float() / head_dim))
    freqs = positions[..., None].float() * inv_freq  # (B, T, hd/2)
    emb = torch.cat((freqs, freqs), dim=-1)  # (B, T, hd): the two halves share a frequency
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x, cos, sin):
    """x (B, H, T, hd); rotate pairs (i, i + hd/2) by the position's angle."""
    cos, sin = cos[:, None], sin[:, None]  # (B, 1, T, hd) broadcast over heads
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class Attention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.n_head, self.n_kv, self.hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        C = cfg.hidden_size
        self.q_proj = nn.Linear(C, self.n_head * self.hd, bias=True)
        self.k_proj = nn.Linear(C, self.n_kv * self.hd, bias=True)
        self.v_proj = nn.Linear(C, self.n_kv * self.hd, bias=True)
        self.o_proj = nn.Linear(self.n_head * self.hd, C, bias=False)

    def forward(self, x, cos, sin, cache=None, layer=0):
        B, T, C = x.shape
        q = self.q_proj(x).view(B, T, self.n_head, self.hd).transpose(1, 2)  # (B, Hq, T, hd)
        k = self.k_proj(x).view(B, T, self.n_kv, self.hd).transpose(1, 2)  # (B, Hkv, T, hd)
        v = self.v_proj(x).view(B, T, self.n_kv, self.hd).transpose(1, 2)  # (B, Hkv, T, hd)
        # Under autocast (fp32 weights, bf16 compute) q and k leave the projections in bf16 and are rotated by
        # fp32 cos/sin, which promotes them; attention takes all three in the compute dtype, v's.
        q, k = apply_rope(q, cos, sin).to(v.dtype), apply_rope(k, cos, sin).to(v.dtype)
        if cache is None:
            # Right-padded batches need no mask: causal attention never looks right.
            y = attention(q, k, v, causal=True)  # (B, Hq, T, hd)
        else:
            cache.write(layer, k, v)
            y = decode_attention(q, cache.k[layer], cache.v[layer], cache.start)  # (B, Hq, T, hd)
        y = y.transpose(1, 2).reshape(B, T, self.n_head * self.hd)  # (B, T, Hq*hd)
        return self.o_proj(y)


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))  # SwiGLU


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, cache=None, layer=0):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, cache, layer)
        return x + self.mlp(self.post_attention_layernorm(x))


class Trunk(nn.Module):
    """Named `model` inside Qwen2 so that parameter names equal the checkpoint's tensor names."""

    def __init__(self, cfg):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size,
                                         _weight=torch.empty(cfg.vocab_size, cfg.hidden_size))
        if not self.embed_tokens.weight.is_meta:  # nn.Embedding's own init, but on the meta device load_pretrained
            nn.init.normal_(self.embed_tokens.weight)  # builds on, where normal_ would import torch._dynamo (seconds)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class Qwen2(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.model = Trunk(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.gradient_checkpointing = False

    def init_weights(self, seed=None):
        """Random init for training from scratch (normal(0, initializer_range), as transformers does)."""
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        for name, p in self.named_parameters():
            with torch.no_grad():
                if name.endswith("norm.weight"):  # every RMSNorm, incl. the *_layernorm ones
                    p.fill_(1.0)
                elif name.endswith(".bias"):
                    p.zero_()
                else:
                    p.copy_(torch.randn(p.shape, generator=gen) * self.config.initializer_range)
        return self

    @property
    def lm_head_weight(self):
        return self.lm_head.weight  # (V, C); the embedding itself when tied

    def forward(self, input_ids, cache=None, n_new=None, return_hidden=False, targets=None, loss_mask=None):
        """input_ids (B, T) -> logits (B, T, V), or the final-normed hidden states (B, T, C), or, given
        targets and loss_mask (B, T), fp32 log p(targets) (B, T) that is 0 where loss_mask is false.

        The log-probs go through masked_logprobs (kernels/logprobs.py: no full-vocabulary fp32 logits, no
        matmul for masked-out rows) and are computed here, inside forward, because under FSDP the lm_head weight
        is only gathered while this module runs.

        Without a cache, positions are 0..T-1 (rows right-padded). With a cache, row b's tokens go at
        positions cache.lengths[b] + 0..T-1 and only its first n_new[b] tokens are kept (default: all T),
        so prefill of ragged prompts, one-token decode and injecting an observation into some rows
        only are all the same call.
        """
        B, T = input_ids.shape
        if cache is None:
            positions = torch.arange(T, device=input_ids.device).expand(B, T)
        else:
            positions = cache.begin(T, n_new)  # (B, T)
        cos, sin = rope_cos_sin(positions, self.config.head_dim, self.config.rope_theta,
                                self.model.embed_tokens.weight.dtype)
        x = self.model.embed_tokens(input_ids)  # (B, T, C)
        for i, block in enumerate(self.model.layers):
            if self.gradient_checkpointing and self.training and cache is None:
                x = torch.utils.checkpoint.checkpoint(block, x, cos, sin, use_reentrant=False)
            else:
                x = block(x, cos, sin, cache, i)
        x = self.model.norm(x)
        if cache is not None:
            cache.end()
        if targets is not None:
            w = self.lm_head.weight
            if torch.is_autocast_enabled(x.device.type):  # a custom autograd kernel sees no autocast: cast as
                dt = torch.get_autocast_dtype(x.device.type)  # a matmul would (the log-softmax stays fp32)
                x, w = x.to(dt), w.to(dt)
            lp = masked_logprobs(x.reshape(B * T, -1), w, targets.reshape(B * T), loss_mask.reshape(B * T))
            return lp.view(B, T)
        return x if return_hidden else self.lm_head(x)

    # ---- checkpoint I/O (below) ----
    @classmethod
    def from_pretrained(cls, path, device=None, dtype=None):
        return load_pretrained(cls, path, device, dtype)

    def save_pretrained(self, path, max_shard_bytes=4 * 2**30):
        save_pretrained(self, path, max_shard_bytes)


# -----------------------------------------------------------------------------
# KV cache: one preallocated buffer per layer, each sequence with its own length

class KVCache:
    """k, v: (L, B, Hkv, S + 1, hd). Slot S is a trash slot: padded tokens (beyond a row's n_new) write
    there, so a ragged write is one scatter with no host sync and never touches a valid slot."""

    def __init__(self, config, batch_size, max_len, device=None, dtype=torch.float32):
        L, Hkv, hd = config.num_hidden_layers, config.num_key_value_heads, config.head_dim
        self.max_len = max_len
        self.k = torch.zeros(L, batch_size, Hkv, max_len + 1, hd, device=device, dtype=dtype)
        self.v = torch.zeros_like(self.k)
        self.lengths = torch.zeros(batch_size, dtype=torch.long, device=device)

    def begin(self, T, n_new=None):
        """Set up one forward of T tokens per row: positions (B, T) and the slots they are written to."""
        B = self.lengths.shape[0]
        ar = torch.arange(T, device=self.lengths.device)
        self.n_new = torch.full((B,), T, device=ar.device, dtype=torch.long) if n_new is None else n_new.long()
        self.start = self.lengths.clone()  # (B,) keys already cached before this call
        positions = self.start[:, None] + ar  # (B, T)
        keep = ar[None, :] < self.n_new[:, None]  # (B, T)
        self.slots = torch.where(keep, positions, self.max_len)  # dropped tokens go to the trash slot
        return positions

    def write(self, layer, k, v):
        """k, v (B, Hkv, T, hd) into their slots of this layer."""
        B, H, T, hd = k.shape
        idx = self.slots[:, None, :, None].expand(B, H, T, hd)  # (B, Hkv, T, hd)
        self.k[layer].scatter_(2, idx, k.to(self.k.dtype))
        self.v[layer].scatter_(2, idx, v.to(self.v.dtype))

    def end(self):
        self.lengths += self.n_new

    def check_room(self, T):
        """Raise if T more tokens would not fit (call before a forward; it syncs on CUDA)."""
        if int(self.lengths.max()) + T > self.max_len:
            raise RuntimeError(f"KV cache full: {int(self.lengths.max())} + {T} > max_len {self.max_len}")


# -----------------------------------------------------------------------------
# Checkpoint layout, as data: HF tensor name -> shape for a config

GLOBAL_TENSORS = {
    "model.embed_tokens.weight": lambda c: (c.vocab_size, c.hidden_size),
    "model.norm.weight": lambda c: (c.hidden_size,),
    "lm_head.weight": lambda c: (c.vocab_size, c.hidden_size),  # absent when tie_word_embeddings
}
LAYER_TENSORS = {  # under model.layers.{i}.
    "input_layernorm.weight": lambda c: (c.hidden_size,),
    "post_attention_layernorm.weight": lambda c: (c.hidden_size,),
    "self_attn.q_proj.weight": lambda c: (c.num_attention_heads * c.head_dim, c.hidden_size),
    "self_attn.q_proj.bias": lambda c: (c.num_attention_heads * c.head_dim,),
    "self_attn.k_proj.weight": lambda c: (c.num_key_value_heads * c.head_dim, c.hidden_size),
    "self_attn.k_proj.bias": lambda c: (c.num_key_value_heads * c.head_dim,),
    "self_attn.v_proj.weight": lambda c: (c.num_key_value_heads * c.head_dim, c.hidden_size),
    "self_attn.v_proj.bias": lambda c: (c.num_key_value_heads * c.head_dim,),
    "self_attn.o_proj.weight": lambda c: (c.hidden_size, c.num_attention_heads * c.head_dim),
    "mlp.gate_proj.weight": lambda c: (c.intermediate_size, c.hidden_size),
    "mlp.up_proj.weight": lambda c: (c.intermediate_size, c.hidden_size),
    "mlp.down_proj.weight": lambda c: (c.hidden_size, c.intermediate_size),
}


def expected_tensors(cfg):
    shapes = {name: f(cfg) for name, f in GLOBAL_TENSORS.items()}
    for i in range(cfg.num_hidden_layers):
        shapes.update({f"model.layers.{i}.{name}": f(cfg) for name, f in LAYER_TENSORS.items()})
    if cfg.tie_word_embeddings:
        del shapes["lm_head.weight"]
    return shapes


class CheckpointError(ValueError):
    pass


def checkpoint_files(path):
    """{tensor name: safetensors file} from model.safetensors or a sharded index."""
    index = os.path.join(path, "model.safetensors.index.json")
    single = os.path.join(path, "model.safetensors")
    if os.path.isfile(index):
        try:
            with open(index, "rb") as f:
                meta = json.loads(f.read().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{index}: invalid JSON ({e})") from None
        if not isinstance(meta, dict):
            raise CheckpointError(f"{index}: should hold a JSON object, got {type(meta).__name__}")
        weight_map = meta.get("weight_map")
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{index}: 'weight_map' should be an object {{tensor name: shard file}}, got "
                                  f"{json.dumps(weight_map)[:60]}")
        for name, fname in weight_map.items():  # a shard is a file of this checkpoint, nowhere else
            if not isinstance(fname, str) or os.path.isabs(fname) or ".." in re.split(r"[/\\]", fname):
                raise CheckpointError(f"{index}: shard path {fname!r} (holding {name}) is not a relative path "
                                      f"inside {path}")
        files = {name: os.path.join(path, fname) for name, fname in weight_map.items()}
        for name, file in files.items():
            if not os.path.isfile(file):
                raise CheckpointError(f"{index}: shard {os.path.basename(file)} (holding {name}) is missing")
        return files
    if os.path.isfile(single):
        with _open_safetensors(single) as f:
            return {name: single for name in f.keys()}
    raise CheckpointError(f"{path}: neither model.safetensors nor model.safetensors.index.json found")


FLOAT_DTYPES = {"F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64"}  # safetensors -> torch


def first_nonfinite(named_tensors):
    """Name of the first tensor holding a NaN or Inf, or None. One max |x| per tensor (a fused multi-tensor
    kernel on CUDA; NaN propagates through max, and unlike a sum or an L2 norm it cannot overflow on finite
    values) and one host sync for all of them. DTensors (FSDP2) are checked on this rank's shard."""
    named = [(n, t.to_local() if hasattr(t, "to_local") else t) for n, t in named_tensors]
    named = [(n, t.detach()) for n, t in named if t.numel()]
    if not named:
        return None
    ok = torch.stack([m.float() for m in torch._foreach_norm([t for _, t in named], float("inf"))]).isfinite()
    if bool(ok.all()):  # the one sync
        return None
    return named[int((~ok).nonzero()[0, 0])][0]


def _open_safetensors(file, device="cpu"):
    try:
        return safe_open(file, framework="pt", device=str(device))
    except (SafetensorError, OSError, RuntimeError) as e:
        raise CheckpointError(f"{file}: cannot read safetensors header ({e})") from None


def load_pretrained(cls, path, device=None, dtype=None):
    """Validate every tensor's name and shape against config.json first, then load tensor by tensor
    straight to `device` into a model built on the meta device: no random init and no full extra copy
    in host memory (safetensors memory-maps the file; each tensor is copied once to its destination)."""
    cfg = Qwen2Config.from_json(os.path.join(path, "config.json"))
    files = checkpoint_files(path)
    # More layers than the weights hold is refused here, from the names alone: expected_tensors(cfg) lists every
    # layer's tensors, which for a num_hidden_layers of 10^6 takes longer than any check should.
    present = max((int(m[1]) + 1 for name in files if (m := re.match(r"model\.layers\.(\d+)\.", name))), default=0)
    if cfg.num_hidden_layers > present:
        raise CheckpointError(f"{path}/config.json: field 'num_hidden_layers' is {cfg.num_hidden_layers}, but the "
                              f"weights hold {present} layer(s)")
    want = expected_tensors(cfg)
    by_file = {}
    for name, file in files.items():
        by_file.setdefault(file, []).append(name)
    # Pass 1: headers only. Every weight is floating point and all share one dtype (an I32 tensor among
    # BF16 ones is a broken or quantized checkpoint, which casting to --dtype would silently garble).
    cfg_dtype = cfg.extra.get("torch_dtype") or cfg.extra.get("dtype")
    if cfg_dtype is not None and cfg_dtype not in FLOAT_DTYPES.values():
        raise CheckpointError(f"{path}/config.json: torch_dtype {cfg_dtype!r} is not a floating-point type")
    first = None  # (dtype, tensor, file) of the first weight seen: the others must match it
    for file, names in by_file.items():
        with _open_safetensors(file) as f:
            present = set(f.keys())
            for name in names:
                if name not in present:
                    raise CheckpointError(f"{file}: index lists tensor {name} but the file lacks it")
                if name == "lm_head.weight" and cfg.tie_word_embeddings:
                    continue  # some tied checkpoints still carry it; the embedding is used
                if name not in want:
                    raise CheckpointError(f"{file}: unexpected tensor {name} (not in a Qwen2 of this config)")
                shape = tuple(f.get_slice(name).get_shape())
                if shape != want[name]:
                    raise CheckpointError(f"{file}: tensor {name} has shape {shape}, config.json implies {want[name]}")
                dt = f.get_slice(name).get_dtype()  # safetensors' code: "BF16", "F32", "I32", ...
                if dt not in FLOAT_DTYPES:
                    raise CheckpointError(f"{file}: tensor {name} has dtype {dt}, but a Qwen2's weights are floating "
                                          f"point (config.json's torch_dtype: {cfg_dtype})")
                first = first or (dt, name, file)
                if dt != first[0]:
                    raise CheckpointError(f"{file}: tensor {name} has dtype {dt}, but {first[1]} (in {first[2]}) "
                                          f"has {first[0]}: a checkpoint's weights share one dtype")
    missing = sorted(set(want) - set(files))
    if missing:
        raise CheckpointError(f"{path}: missing tensor(s) {', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else ""))
    # Pass 2: data.
    device = torch.device(device) if device is not None else torch.device("cpu")
    with torch.device("meta"):
        model = cls(cfg)
    for file, names in by_file.items():
        with _open_safetensors(file, device) as f:
            state, peaks = {}, []
            for name in names:
                if name not in want:
                    continue
                try:
                    t = f.get_tensor(name)
                except (SafetensorError, RuntimeError, OSError) as e:
                    raise CheckpointError(f"{file}: cannot read tensor {name} ({e})") from None
                peaks.append(torch.linalg.vector_norm(t, float("inf")).float())  # max |x|; NaN and Inf survive it
                state[name] = t.to(dtype) if dtype is not None else t
            finite = torch.stack(peaks).isfinite() if peaks else torch.ones(0, dtype=torch.bool)
            if not bool(finite.all()):  # one host sync per file: weights holding NaN/Inf are refused, by name
                raise CheckpointError(f"{file}: tensor {list(state)[int((~finite).nonzero()[0, 0])]} holds NaN or Inf")
            model.load_state_dict(state, strict=False, assign=True)
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    for name, p in model.named_parameters():
        if p.is_meta:  # unreachable after the checks above; kept as the promise of no silent init
            raise CheckpointError(f"{path}: tensor {name} was never loaded")
    return model


def save_pretrained(model, path, max_shard_bytes=4 * 2**30):
    """Write config.json + model.safetensors (or shards + index) into a temporary directory next to
    `path`, then swap it in, so a crash mid-save never leaves a half-written checkpoint at `path`."""
    cfg = model.config
    state = {name: t.detach() for name, t in model.state_dict().items()}
    if cfg.tie_word_embeddings:
        state.pop("lm_head.weight", None)  # shared with the embedding; HF omits it
    shards, size = [[]], 0
    for name, t in state.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    # Not tempfile.mkdtemp: its 0700 would make the checkpoint unreadable to other users of a shared machine.
    tmp = os.path.join(parent, f".tmp-{os.path.basename(os.path.abspath(path))}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)  # left by a killed save of this pid's predecessor
    os.makedirs(tmp)  # mode 0777 minus the umask, as any directory
    try:
        weight_map = {}
        for i, names in enumerate(shards):
            fname = "model.safetensors" if len(shards) == 1 else f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            save_file({n: state[n].contiguous().cpu() for n in names}, os.path.join(tmp, fname),
                      metadata={"format": "pt"})
            weight_map.update({n: fname for n in names})
        if len(shards) > 1:
            total = sum(t.numel() * t.element_size() for t in state.values())
            with open(os.path.join(tmp, "model.safetensors.index.json"), "w") as f:
                json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
        d = cfg.to_dict()
        d["torch_dtype"] = d["dtype"] = str(next(iter(state.values())).dtype).removeprefix("torch.")
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(d, f, indent=2)
        mode = os.stat(os.path.join(tmp, "config.json")).st_mode & 0o777  # 0666 minus the umask, as open() made it
        for fname in set(weight_map.values()):
            os.chmod(os.path.join(tmp, fname), mode)  # safetensors writes its files 0600
        replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def replace_dir(src, dst):
    """Move directory src to dst, replacing dst. Between the two renames dst briefly does not exist (POSIX
    cannot swap two directories in one rename), but its old contents survive under dst + '.old' until the
    new one is in place. So a directory that a pointer names (a training run's `latest`) must never be
    replaced this way: checkpoints.save_checkpoint writes such a step under another name, then switches."""
    old = dst.rstrip("/") + ".old"
    shutil.rmtree(old, ignore_errors=True)
    if os.path.exists(dst):
        os.rename(dst, old)
    os.rename(src, dst)
    shutil.rmtree(old, ignore_errors=True)


def num_params(model):
    return sum(p.numel() for p in model.parameters())


if __name__ == "__main__":
    import argparse
    ap = argparse.ArgumentParser(description="Load a Qwen2 checkpoint and print its config and size.")
    ap.add_argument("path", help="Hugging Face-layout checkpoint directory")
    a = ap.parse_args()
    m = Qwen2.from_pretrained(a.path)
    print(m.config)
    print(f"{num_params(m) / 1e6:.1f}M parameters")
