"""Training/prefill flash attention against torch SDPA (the independent oracle) and the torch reference.

The KV-cache decode kernel (kernels/decode.py) is tested in tests/test_decode.py.

The oracle runs in fp64 with the kv heads expanded by repeat_interleave and its own bottom-right
causal mask, so it shares no code with either implementation. The Triton kernels run under
TRITON_INTERPRET=1 on CPU tensors, in fp32 and fp16 only (the interpreter mishandles bf16).
The interpreter uses small blocks (32 x 16 forward, 16 x 32 for dK/dV), so T, S in {1, 7, 65, 82} exercise
ragged last blocks (65 = 2 x 32 + 1 = 4 x 16 + 1; 82 = 2 x 32 + 18 = 5 x 16 + 2), several blocks per program
and both the masked and unmasked loops.
Run: python -m pytest -q tests/test_attention.py
"""
import inspect
import os
import subprocess
import sys

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported anywhere

import pytest  # noqa: E402
import torch  # noqa: E402

from kernels.attention import attention_reference, attention_triton  # noqa: E402
from attn_oracle import (TOL, TOL_CUDA, make_qkv, needs_cuda, needs_interpreter, rel_err,  # noqa: E402
                         sdpa_oracle)  # (tests/ is on sys.path)



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
    (82, 82, 32, 2, True, torch.float32),
    (82, 82, 64, 1, True, torch.float16),
    (1, 82, 64, 7, True, torch.float16),      # one new token over a long prefix
    (7, 65, 128, 1, True, torch.float32),
    (65, 82, 32, 2, True, torch.float32),     # T < S: the diagonal is offset by S - T
    (65, 82, 64, 2, True, torch.float16),
    (82, 7, 32, 7, False, torch.float32),     # T > S is fine without a causal mask
    (65, 1, 64, 1, False, torch.float16),
    (7, 82, 128, 2, False, torch.float32),
    (82, 65, 64, 2, False, torch.float16),
    (1, 7, 32, 2, False, torch.float16),
]


@needs_interpreter
@pytest.mark.parametrize("T,S,D,group,causal,dtype", CASES)
def test_attention_triton_matches_sdpa_and_reference(T, S, D, group, causal, dtype):
    Hkv = 1 if group == 7 else 2
    q, k, v, do = make_qkv(1, Hkv * group, Hkv, T, S, D, dtype, seed=T * 1000 + S)
    ours = out_and_grads(attention_triton, q, k, v, do, causal=causal)
    oracle = out_and_grads(sdpa_oracle, q, k, v, do, causal=causal)
    ref = out_and_grads(attention_reference, q, k, v, do, causal=causal)
    assert ours[0].dtype == dtype and ours[0].shape == q.shape
    for name, a, b, r in zip(("o", "dq", "dk", "dv"), ours, oracle, ref):
        assert a.shape == b.shape, name
        assert torch.isfinite(a).all(), name
        assert rel_err(a, b) < TOL[dtype], (name, rel_err(a, b))
        assert rel_err(a, r) < 2 * TOL[dtype], (name, rel_err(a, r))


@needs_interpreter
def test_attention_triton_batch_strides_and_scale():
    """B > 1, inputs as (B, T, H, D).transpose(1, 2) views (the model's layout), custom scale."""
    B, Hq, Hkv, T, S, D = 2, 4, 2, 33, 40, 32
    g = torch.Generator().manual_seed(1)
    q = torch.randn(B, T, Hq, D, generator=g).transpose(1, 2)
    k = torch.randn(B, S, Hkv, D, generator=g).transpose(1, 2)
    v = torch.randn(B, S, Hkv, D, generator=g).transpose(1, 2)
    do = torch.randn(B, Hq, T, D, generator=g)
    assert not q.is_contiguous()
    ours = out_and_grads(attention_triton, q, k, v, do, causal=True, sm_scale=0.3)
    oracle = out_and_grads(sdpa_oracle, q, k, v, do, causal=True, sm_scale=0.3)
    for name, a, b in zip(("o", "dq", "dk", "dv"), ours, oracle):
        assert rel_err(a, b) < TOL[torch.float32], (name, rel_err(a, b))
    # rows of different batch entries must not mix: perturbing batch 1 leaves batch 0 unchanged
    k2 = k.clone()
    k2[1] += 1.0
    assert torch.equal(attention_triton(q, k, v)[0], attention_triton(q, k2, v)[0])


def test_causal_needs_t_le_s():
    q, k, v, _ = make_qkv(1, 2, 2, 8, 4, 32, torch.float32)
    with pytest.raises(AssertionError):
        attention_triton(q, k, v, causal=True)
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


@needs_interpreter
def test_attention_triton_every_diagonal_offset():
    """Causal T < S for every S - T modulo the block sizes (16 and 32 under the interpreter): the
    split between masked and unmasked blocks moves with the offset, in forward and backward."""
    T, D = 40, 16
    for diag in range(0, 33):
        q, k, v, do = make_qkv(1, 1, 1, T, T + diag, D, torch.float32, seed=diag)
        ours = out_and_grads(attention_triton, q, k, v, do, causal=True)
        oracle = out_and_grads(sdpa_oracle, q, k, v, do, causal=True)
        for name, a, b in zip(("o", "dq", "dk", "dv"), ours, oracle):
            assert rel_err(a, b) < TOL[torch.float32], (diag, name, rel_err(a, b))


# ----------------------------------------------------------------------------------------------
# Dispatch: by the tensor's device, not by the machine
# ----------------------------------------------------------------------------------------------

def test_dispatch_follows_the_tensor_not_the_machine(monkeypatch):
    """On a GPU machine CPU tensors must still take the references; AUTOCOA_KERNELS overrides."""
    import kernels.attention as A
    import kernels.decode as Dm
    import kernels.logprobs as L
    assert inspect.ismodule(A) and inspect.ismodule(Dm) and inspect.ismodule(L)  # not shadowed by functions
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    calls = []
    for mod, name in ((A, "attention_triton"), (Dm, "decode_attention_triton"), (L, "masked_logprobs_triton")):
        monkeypatch.setattr(mod, name, lambda *a, _n=name, **k: calls.append(_n) or "triton")
    q, k, v, _ = make_qkv(1, 4, 2, 5, 5, 16, torch.float32)
    start = torch.tensor([0])
    h, w = torch.randn(3, 16), torch.randn(11, 16)
    t, m = torch.tensor([1, 2, 3]), torch.tensor([True, False, True])

    def run_all():
        return (A.attention(q, k, v), Dm.decode_attention(q, k, v, start), L.masked_logprobs(h, w, t, m))

    for choice in (None, "auto", "torch"):
        if choice is None:
            monkeypatch.delenv("AUTOCOA_KERNELS", raising=False)
        else:
            monkeypatch.setenv("AUTOCOA_KERNELS", choice)
        o, od, lp = run_all()
        assert calls == []
        assert torch.equal(o, A.attention_reference(q, k, v))
        assert torch.equal(od, Dm.decode_attention_reference(q, k, v, start))
        assert torch.equal(lp, L.masked_logprobs_reference(h, w, t, m))
    monkeypatch.setenv("AUTOCOA_KERNELS", "triton")
    assert run_all() == ("triton",) * 3
    assert calls == ["attention_triton", "decode_attention_triton", "masked_logprobs_triton"]
    monkeypatch.setenv("AUTOCOA_KERNELS", "cuda")
    with pytest.raises(ValueError, match="AUTOCOA_KERNELS"):
        A.attention(q, k, v)


def test_importing_kernels_prints_nothing():
    code = "import kernels, kernels.attention, kernels.decode, kernels.logprobs"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root)
    assert p.returncode == 0, p.stderr
    assert p.stdout == ""


# ----------------------------------------------------------------------------------------------
# CUDA: the compiled kernels (bf16 included, which the interpreter cannot run) vs the fp64 oracle
# ----------------------------------------------------------------------------------------------

@needs_cuda
@pytest.mark.parametrize("dtype,T,S,D,causal", [
    (torch.bfloat16, 1000, 1000, 128, True), (torch.bfloat16, 300, 1111, 64, True),
    (torch.bfloat16, 77, 1000, 128, False), (torch.float16, 1000, 1000, 128, True),
    (torch.float32, 1000, 1000, 128, True),  # fp32: tl.dot in TF32, the configs for 4-byte inputs
])
def test_cuda_attention_matches_fp64_oracle(dtype, T, S, D, causal):
    """7B's 28/4 heads; ours must be within TOL_CUDA, or within twice SDPA's own error in this dtype.
    Each (dtype, D, causal) autotunes and compiles every config once, so the list is short."""
    import kernels.attention as A
    q, k, v, do = make_qkv(2, 28, 4, T, S, D, dtype, seed=T + S, device="cuda")
    oracle = out_and_grads(sdpa_oracle, q, k, v, do, causal=causal)
    ours = out_and_grads(A.attention, q, k, v, do, causal=causal)  # CUDA tensors: dispatched to Triton
    sdpa = out_and_grads(sdpa_oracle, q, k, v, do, causal=causal, dtype=dtype)
    for name, a, b, s in zip(("o", "dq", "dk", "dv"), ours, oracle, sdpa):
        assert a.dtype == dtype and torch.isfinite(a).all(), name
        err, bound = rel_err(a, b), max(TOL_CUDA[dtype], 2 * rel_err(s, b))
        assert err <= bound, (name, err, bound)


@needs_cuda
def test_cuda_dispatch_sends_cuda_tensors_to_triton(monkeypatch):
    import kernels.attention as A
    monkeypatch.delenv("AUTOCOA_KERNELS", raising=False)
    calls = []
    monkeypatch.setattr(A, "attention_triton", lambda *a, **k: calls.append(1) or "triton")
    q, k, v, _ = make_qkv(1, 4, 2, 16, 16, 64, torch.bfloat16, device="cuda")
    assert A.attention(q, k, v) == "triton" and calls == [1]
