"""KV-cache decode kernel (kernels/decode.py) against torch SDPA and against its torch reference.

The oracle is the same as in tests/test_attention.py: fp64 SDPA with the kv heads expanded by
repeat_interleave and its own bottom-right causal mask, applied to each row alone over its valid
prefix, so it shares no code with either implementation. The Triton kernels run under
TRITON_INTERPRET=1 on CPU tensors, in fp32 and fp16 only (the interpreter mishandles bf16).
Under the interpreter the decode kernel uses 16-key blocks and pretends to have 4 SMs, so the
caches here are split into two chunks, and the row with an empty prefix cannot see the second.
Run: python -m pytest -q tests/test_decode.py
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported anywhere

import pytest  # noqa: E402
import torch  # noqa: E402

from kernels.attention import attention_triton  # noqa: E402
from kernels.decode import decode_attention_reference, decode_attention_triton  # noqa: E402
from attn_oracle import (TOL, TOL_CUDA, make_qkv, needs_cuda, needs_interpreter, rel_err,  # noqa: E402
                         sdpa_oracle)  # (tests/ is on sys.path)


def make_cache(B, Hq, Hkv, T, S_max, D, start, dtype, seed=0, fill=float("nan")):
    """A cache whose slots past each row's last new key hold `fill`: nan for the Triton kernel (it must
    never read them), large finite garbage for the reference (it masks them; its contract is that they
    are finite, which model.KVCache guarantees)."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Hq, T, D, generator=g).to(dtype)
    k = torch.randn(B, Hkv, S_max, D, generator=g).to(dtype)
    v = torch.randn(B, Hkv, S_max, D, generator=g).to(dtype)
    for b, s in enumerate(start.tolist()):
        k[b, :, s + T:] = fill
        v[b, :, s + T:] = fill
    return q, k, v


@needs_interpreter
@pytest.mark.parametrize("T,group,D,dtype", [(1, 7, 128, torch.float32), (3, 2, 64, torch.float16),
                                             (3, 7, 32, torch.float32), (1, 1, 64, torch.float16)])
def test_decode_matches_reference_and_per_row_sdpa(T, group, D, dtype):
    B, Hkv, S_max = 3, 2, 130
    start = torch.tensor([0, 37, S_max - T])  # empty prefix, mid-cache, cache exactly full
    Hq = Hkv * group
    q, k, v = make_cache(B, Hq, Hkv, T, S_max, D, start, dtype, seed=T)
    _, kf, vf = make_cache(B, Hq, Hkv, T, S_max, D, start, dtype, seed=T, fill=1e4)
    ours = decode_attention_triton(q, k, v, start)
    ref = decode_attention_reference(q, kf, vf, start)
    assert ours.shape == q.shape and ours.dtype == dtype
    assert torch.isfinite(ours).all() and torch.isfinite(ref).all()
    assert rel_err(ours, ref) < 2 * TOL[dtype]
    for b, s in enumerate(start.tolist()):  # oracle: each row alone over its valid prefix
        L = s + T
        row = sdpa_oracle(q[b:b + 1], k[b:b + 1, :, :L], v[b:b + 1, :, :L], causal=True)
        assert rel_err(ours[b:b + 1], row) < TOL[dtype], (b, rel_err(ours[b:b + 1], row))
        assert rel_err(ref[b:b + 1], row) < TOL[dtype], (b, rel_err(ref[b:b + 1], row))


@needs_interpreter
def test_decode_long_t_and_strided_cache():
    """T = 20 with group 7 is 140 rows: more than one row block. The cache is a strided view."""
    B, Hq, Hkv, T, S_max, D = 2, 7, 1, 20, 70, 32
    start = torch.tensor([50, 3])
    q, k, v = make_cache(B, Hq, Hkv, T, S_max, D, start, torch.float32, seed=5)
    k, v = (torch.cat([x, torch.zeros_like(x)], dim=3)[..., :D] for x in (k, v))  # row stride 2 * D
    assert not k.is_contiguous()
    ours = decode_attention_triton(q, k, v, start)
    for b, s in enumerate(start.tolist()):
        row = sdpa_oracle(q[b:b + 1], k[b:b + 1, :, :s + T], v[b:b + 1, :, :s + T], causal=True)
        assert rel_err(ours[b:b + 1], row) < TOL[torch.float32]


@needs_interpreter
def test_decode_agrees_with_prefill_when_rows_are_full():
    """Same lengths everywhere: decoding the last T tokens equals the prefill kernel's last T rows."""
    B, Hq, Hkv, S, T, D = 2, 4, 2, 45, 3, 32
    q, k, v, _ = make_qkv(B, Hq, Hkv, S, S, D, torch.float32, seed=9)
    full = attention_triton(q, k, v, causal=True)[:, :, -T:]
    dec = decode_attention_triton(q[:, :, -T:], k, v, torch.full((B,), S - T))
    assert rel_err(dec, full) < TOL[torch.float32]


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("T,D", [(1, 128), (3, 64), (20, 128)])  # T = 20: 140 rows, two row blocks
def test_cuda_decode_matches_fp64_oracle(dtype, T, D):
    """Ragged rows over a 3000-slot cache with 7B's 28/4 heads; fp32 at D = 128 with many rows is the
    config that once needed more shared memory than an H100 has."""
    from kernels.decode import decode_attention
    B, Hq, Hkv, S_max = 3, 28, 4, 3000
    start = torch.tensor([0, 1234, S_max - T])
    q, k, v = make_cache(B, Hq, Hkv, T, S_max, D, start, dtype, seed=T)
    q, k, v, start = q.cuda(), k.cuda(), v.cuda(), start.cuda()
    ours = decode_attention(q, k, v, start)  # CUDA tensors: dispatched to Triton
    assert ours.dtype == dtype and torch.isfinite(ours).all()
    for b, s in enumerate(start.tolist()):
        rows = (q[b:b + 1], k[b:b + 1, :, :s + T], v[b:b + 1, :, :s + T])
        oracle = sdpa_oracle(*rows, causal=True)
        err = rel_err(ours[b:b + 1], oracle)
        bound = max(TOL_CUDA[dtype], 2 * rel_err(sdpa_oracle(*rows, causal=True, dtype=dtype), oracle))
        assert err <= bound, (b, err, bound)
