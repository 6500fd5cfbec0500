"""The attention oracle shared by tests/test_attention.py and tests/test_decode.py: fp64 SDPA with the kv
heads expanded by repeat_interleave and its own bottom-right causal mask, so it shares no code with the
kernels or their references; plus the error measure, tolerances, random inputs and the two skip marks
(CPU interpreter tests vs CUDA tests) that the kernel test files use."""
import os

import pytest
import torch
import torch.nn.functional as F

TOL = {torch.float32: 2e-5, torch.float16: 2e-3}  # norm-wise relative error vs the fp64 oracle, interpreter
# On a GPU fp32 tl.dot runs in TF32 (10-bit mantissa, like fp16), so fp32 gets fp16's tolerance there;
# bf16 has 8 bits. A CUDA test also accepts twice the error of torch SDPA in the same dtype.
TOL_CUDA = {torch.float32: 4e-3, torch.float16: 4e-3, torch.bfloat16: 3e-2}

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
needs_interpreter = pytest.mark.skipif(not INTERPRET, reason="runs the Triton kernels on CPU tensors: "
                                       "needs TRITON_INTERPRET=1 (tests/conftest.py sets it)")
needs_cuda = pytest.mark.skipif(INTERPRET or not torch.cuda.is_available(),
                                reason="needs a CUDA device and TRITON_INTERPRET unset (bash bench/gpu.sh runs these)")


def rel_err(a, b):
    """Norm-wise relative error; the floor (an RMS of 0.01) covers exact zeros such as dq when S = 1."""
    a, b = a.double(), b.double()
    return ((a - b).norm() / max(b.norm().item(), 1e-2 * b.numel() ** 0.5)).item()


def sdpa_oracle(q, k, v, causal, sm_scale=None, dtype=torch.float64):
    """fp64 SDPA with expanded kv heads; causal aligned bottom-right (query i sees j <= i + S - T).
    dtype=q.dtype gives torch's own SDPA in the input dtype: the yardstick for the CUDA tests."""
    G = q.shape[1] // k.shape[1]
    T, S = q.shape[2], k.shape[2]
    mask = None
    if causal:
        pos = torch.arange(max(T, S), device=q.device)
        mask = pos[None, :S] <= pos[:T, None] + (S - T)  # (T, S)
    return F.scaled_dot_product_attention(q.to(dtype), k.to(dtype).repeat_interleave(G, 1),
                                          v.to(dtype).repeat_interleave(G, 1), attn_mask=mask, scale=sm_scale)


def make_qkv(B, Hq, Hkv, T, S, D, dtype, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Hq, T, D, generator=g).to(device, dtype)
    k = torch.randn(B, Hkv, S, D, generator=g).to(device, dtype)
    v = torch.randn(B, Hkv, S, D, generator=g).to(device, dtype)
    do = torch.randn(B, Hq, T, D, generator=g).to(device, dtype)
    return q, k, v, do
