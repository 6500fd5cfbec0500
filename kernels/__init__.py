"""Custom kernels for the hot spots of AutoCoA: attention (training/prefill and KV-cache decode) and the
masked token log-prob.

Each op lives in its own file, in Triton-tutorial order: a PyTorch reference (also the CPU fallback),
the @triton.jit kernel(s), the launcher, the autograd Function, and a benchmark under __main__.

The backend is chosen once, here, at import time and printed:
  - "triton" when a CUDA device is present,
  - "torch"  (the references) otherwise.
Override with AUTOCOA_KERNELS=torch|triton. Tests call the Triton entry points directly on CPU
tensors under TRITON_INTERPRET=1, so they exercise the real kernels without a GPU.
"""
import os

import torch

BACKEND = os.environ.get("AUTOCOA_KERNELS") or ("triton" if torch.cuda.is_available() else "torch")
if BACKEND not in ("torch", "triton"):
    raise ValueError(f"AUTOCOA_KERNELS must be 'torch' or 'triton', got {BACKEND!r}")
print(f"[kernels] backend: {BACKEND}")

from kernels.attention import attention_reference, flash_attention  # noqa: E402
from kernels.decode import cached_attention_reference, decode_attention  # noqa: E402
from kernels.logprobs import masked_logprobs_reference, masked_logprobs_triton  # noqa: E402


def attention(q, k, v, causal=True):
    """Training/prefill attention. q (B, Hq, T, D), k/v (B, Hkv, S, D) -> (B, Hq, T, D)."""
    if BACKEND == "triton":
        return flash_attention(q, k, v, causal=causal)
    return attention_reference(q, k, v, causal=causal)


def cached_attention(q, k_cache, v_cache, start):
    """Attention of a few new tokens per sequence against a KV cache with per-sequence lengths.

    q (B, Hq, T, D); k_cache/v_cache (B, Hkv, S_max, D) already holding the new keys at
    positions start[b] .. start[b]+T-1; query i of row b sees keys j <= start[b] + i.
    """
    if BACKEND == "triton":
        return decode_attention(q, k_cache, v_cache, start)
    return cached_attention_reference(q, k_cache, v_cache, start)


def masked_logprobs(hidden, weight, targets, mask):
    """log p(target) for rows where mask is true, 0 elsewhere. hidden (N, H), weight (V, H) -> (N,) fp32."""
    if BACKEND == "triton":
        return masked_logprobs_triton(hidden, weight, targets, mask)
    return masked_logprobs_reference(hidden, weight, targets, mask)
