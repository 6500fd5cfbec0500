"""Training/prefill flash attention against torch SDPA (the independent oracle) and the torch reference.

The KV-cache decode kernel (kernels/decode.py) is tested in tests/test_decode.py.

The oracle runs in fp64 with the kv heads expanded by repeat_interleave and its own bottom-right
causal mask, so it shares no code with either implementation. The Triton kernels run under
TRITON_INTERPRET=1 on CPU tensors, in fp32 and fp16 only (the interpreter mishandles bf16).
The interpreter uses small blocks (32 x 16 forward), so T, S in {1, 7, 65, 130} exercise
ragged last blocks, several blocks per program and both the masked and unmasked loops.
Run: python -m pytest -q tests/test_attention.py
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported anywhere

import pytest  # noqa: E402
import torch  # noqa: E402

from kernels.attention import attention_reference, flash_attention  # noqa: E402
from attn_oracle import TOL, make_qkv, rel_err, sdpa_oracle  # noqa: E402  (tests/ is on sys.path)



def out_and_grads(fn, q, k, v, do, **kw):
    q, k, v = (x.detach().clone().requires_grad_() for x in (q, k, v))
    o = fn(q, k, v, **kw)
    return (o, *torch.autograd.grad(o, (q, k, v), do.to(o.dtype)))


# (T, S, D, group, causal, dtype): every value of each axis appears, not the full cross product.
# group = Hq / Hkv; Hkv = 2 except for group 7 (Hkv = 1) to keep the interpreter quick.
CASES = [
    (1, 1, 32, 1, True, torch.float32),
    (7, 7, 64, 2, True, torch.float32),
    (65, 65, 128, 7, True, torch.float16),
    (130, 130, 32, 2, True, torch.float32),
    (130, 130, 64, 1, True, torch.float16),
    (1, 130, 64, 7, True, torch.float16),      # one new token over a long prefix
    (7, 65, 128, 1, True, torch.float32),
    (65, 130, 32, 2, True, torch.float32),     # T < S: the diagonal is offset by S - T
    (65, 130, 64, 2, True, torch.float16),
    (130, 7, 32, 7, False, torch.float32),     # T > S is fine without a causal mask
    (65, 1, 64, 1, False, torch.float16),
    (7, 130, 128, 2, False, torch.float32),
    (130, 65, 64, 2, False, torch.float16),
    (1, 7, 32, 2, False, torch.float16),
]


@pytest.mark.parametrize("T,S,D,group,causal,dtype", CASES)
def test_flash_attention_matches_sdpa_and_reference(T, S, D, group, causal, dtype):
    Hkv = 1 if group == 7 else 2
    q, k, v, do = make_qkv(1, Hkv * group, Hkv, T, S, D, dtype, seed=T * 1000 + S)
    ours = out_and_grads(flash_attention, q, k, v, do, causal=causal)
    oracle = out_and_grads(sdpa_oracle, q, k, v, do, causal=causal)
    ref = out_and_grads(attention_reference, q, k, v, do, causal=causal)
    assert ours[0].dtype == dtype and ours[0].shape == q.shape
    for name, a, b, r in zip(("o", "dq", "dk", "dv"), ours, oracle, ref):
        assert a.shape == b.shape, name
        assert torch.isfinite(a).all(), name
        assert rel_err(a, b) < TOL[dtype], (name, rel_err(a, b))
        assert rel_err(a, r) < 2 * TOL[dtype], (name, rel_err(a, r))


def test_flash_attention_batch_strides_and_scale():
    """B > 1, inputs as (B, T, H, D).transpose(1, 2) views (the model's layout), custom scale."""
    B, Hq, Hkv, T, S, D = 2, 4, 2, 33, 40, 32
    g = torch.Generator().manual_seed(1)
    q = torch.randn(B, T, Hq, D, generator=g).transpose(1, 2)
    k = torch.randn(B, S, Hkv, D, generator=g).transpose(1, 2)
    v = torch.randn(B, S, Hkv, D, generator=g).transpose(1, 2)
    do = torch.randn(B, Hq, T, D, generator=g)
    assert not q.is_contiguous()
    ours = out_and_grads(flash_attention, q, k, v, do, causal=True, sm_scale=0.3)
    oracle = out_and_grads(sdpa_oracle, q, k, v, do, causal=True, sm_scale=0.3)
    for name, a, b in zip(("o", "dq", "dk", "dv"), ours, oracle):
        assert rel_err(a, b) < TOL[torch.float32], (name, rel_err(a, b))
    # rows of different batch entries must not mix: perturbing batch 1 leaves batch 0 unchanged
    k2 = k.clone()
    k2[1] += 1.0
    assert torch.equal(flash_attention(q, k, v)[0], flash_attention(q, k2, v)[0])


def test_causal_needs_t_le_s():
    q, k, v, _ = make_qkv(1, 2, 2, 8, 4, 32, torch.float32)
    with pytest.raises(AssertionError):
        flash_attention(q, k, v, causal=True)
    with pytest.raises(AssertionError):
        attention_reference(q, k, v, causal=True)


@pytest.mark.parametrize("causal", [True, False])
def test_reference_gradcheck(causal):
    g = torch.Generator().manual_seed(2)
    q = torch.randn(1, 4, 3, 8, generator=g, dtype=torch.float64, requires_grad=True)
    k = torch.randn(1, 2, 5, 8, generator=g, dtype=torch.float64, requires_grad=True)
    v = torch.randn(1, 2, 5, 8, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, c: attention_reference(a, b, c, causal=causal), (q, k, v))


@pytest.mark.parametrize("T,S,group,causal", [(7, 7, 2, True), (5, 9, 7, True), (9, 4, 1, False)])
def test_reference_matches_oracle(T, S, group, causal):
    q, k, v, _ = make_qkv(2, 2 * group, 2, T, S, 16, torch.float64)
    assert rel_err(attention_reference(q, k, v, causal=causal), sdpa_oracle(q, k, v, causal)) < 1e-12


def test_flash_attention_every_diagonal_offset():
    """Causal T < S for every S - T modulo the block sizes (16 and 32 under the interpreter): the
    split between masked and unmasked blocks moves with the offset, in forward and backward."""
    T, D = 40, 16
    for diag in range(0, 33):
        q, k, v, do = make_qkv(1, 1, 1, T, T + diag, D, torch.float32, seed=diag)
        ours = out_and_grads(flash_attention, q, k, v, do, causal=True)
        oracle = out_and_grads(sdpa_oracle, q, k, v, do, causal=True)
        for name, a, b in zip(("o", "dq", "dk", "dv"), ours, oracle):
            assert rel_err(a, b) < TOL[torch.float32], (diag, name, rel_err(a, b))
