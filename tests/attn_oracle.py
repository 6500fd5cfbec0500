"""The attention oracle shared by tests/test_attention.py and tests/test_decode.py: fp64 SDPA with the kv
heads expanded by repeat_interleave and its own bottom-right causal mask, so it shares no code with the
kernels or their references; plus the error measure, tolerances and random inputs both files use."""
import torch
import torch.nn.functional as F

TOL = {torch.float32: 2e-5, torch.float16: 2e-3}  # norm-wise relative error vs the fp64 oracle


def rel_err(a, b):
    """Norm-wise relative error; the floor (an RMS of 0.01) covers exact zeros such as dq when S = 1."""
    a, b = a.double(), b.double()
    return ((a - b).norm() / max(b.norm().item(), 1e-2 * b.numel() ** 0.5)).item()


def sdpa_oracle(q, k, v, causal, sm_scale=None):
    """fp64 SDPA with expanded kv heads; causal aligned bottom-right (query i sees j <= i + S - T)."""
    G = q.shape[1] // k.shape[1]
    T, S = q.shape[2], k.shape[2]
    mask = None
    if causal:
        mask = torch.arange(S)[None, :] <= torch.arange(T)[:, None] + (S - T)  # (T, S)
    return F.scaled_dot_product_attention(q.double(), k.double().repeat_interleave(G, 1),
                                          v.double().repeat_interleave(G, 1), attn_mask=mask, scale=sm_scale)


def make_qkv(B, Hq, Hkv, T, S, D, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Hq, T, D, generator=g).to(dtype)
    k = torch.randn(B, Hkv, S, D, generator=g).to(dtype)
    v = torch.randn(B, Hkv, S, D, generator=g).to(dtype)
    do = torch.randn(B, Hq, T, D, generator=g).to(dtype)
    return q, k, v, do
