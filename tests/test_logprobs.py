"""Masked log-probs: the torch reference and the Triton Function against F.cross_entropy.

The oracle is independent of both implementations: logp = -F.cross_entropy(hidden @ weight.T, ...)
computed in fp32 on one full logits matrix, with ignore_index marking the masked-out rows.
The Triton kernels run under TRITON_INTERPRET=1 on CPU tensors (fp32/fp16 only: the interpreter
mishandles bf16). Run: python -m pytest -q tests/test_logprobs.py
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported anywhere

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from kernels.logprobs import masked_logprobs_reference, masked_logprobs_triton  # noqa: E402
from attn_oracle import needs_cuda, needs_interpreter  # noqa: E402  (tests/ is on sys.path)

IMPLS = {"reference": masked_logprobs_reference, "triton": masked_logprobs_triton}
IMPL_PARAMS = ["reference", pytest.param("triton", marks=needs_interpreter)]
TOL = {torch.float32: 1e-4, torch.float16: 1e-2}  # fp16 logits are rounded before the lse


def make_inputs(N, H, V, dtype, mask_kind, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(N, H, generator=g).to(dtype)
    weight = (torch.randn(V, H, generator=g) * 2 / H**0.5).to(dtype)  # logits of a few units
    targets = torch.randint(0, V, (N,), generator=g)
    mask = {"all": torch.ones(N, dtype=torch.bool),
            "none": torch.zeros(N, dtype=torch.bool),
            "mixed": torch.rand(N, generator=g) < 0.5}[mask_kind]
    targets = torch.where(mask, targets, torch.full_like(targets, -100))  # unmasked targets: junk
    d_out = torch.randn(N, generator=g)
    return hidden, weight, targets, mask, d_out


def oracle(hidden, weight, targets, mask, d_out):
    """(logp, d_hidden, d_weight) in fp32 via F.cross_entropy on the full logits."""
    h = hidden.detach().float().requires_grad_()
    w = weight.detach().float().requires_grad_()
    ignored = torch.where(mask, targets, -100)
    ce = F.cross_entropy(h @ w.T, ignored, ignore_index=-100, reduction="none")
    logp = -ce
    logp.backward(d_out)
    return logp.detach(), h.grad, w.grad


def run(fn, hidden, weight, targets, mask, d_out, **kw):
    h = hidden.clone().requires_grad_()
    w = weight.clone().requires_grad_()
    out = fn(h, w, targets, mask, **kw)
    out.backward(d_out)
    return out.detach(), h.grad, w.grad


def assert_close(actual, expected, tol, what):
    # Scale-aware: gradients of weight rows summed over many tokens can be larger than 1.
    err = (actual.float() - expected).abs().max().item()
    scale = max(1.0, expected.abs().max().item())
    assert err <= tol * scale, f"{what}: max abs err {err:.3e} > {tol * scale:.3e}"


@pytest.mark.parametrize("impl", IMPL_PARAMS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("N,H,V,mask_kind", [
    (19, 32, 1000, "mixed"),
    (16, 64, 4099, "all"),  # V > one 4096-wide tile: the online lse crosses tiles, tail masked
    (13, 32, 4099, "mixed"),
    (9, 32, 1000, "none"),
])
def test_matches_cross_entropy(impl, dtype, N, H, V, mask_kind):
    hidden, weight, targets, mask, d_out = make_inputs(N, H, V, dtype, mask_kind)
    out, d_h, d_w = run(IMPLS[impl], hidden, weight, targets, mask, d_out, chunk_rows=4)
    ref, ref_h, ref_w = oracle(hidden, weight, targets, mask, d_out)
    assert out.dtype == torch.float32 and out.shape == (N,)
    assert d_h.dtype == dtype and d_w.dtype == dtype
    tol = TOL[dtype]
    assert_close(out, ref, tol, "logp")
    assert_close(d_h, ref_h, tol, "d_hidden")
    assert_close(d_w, ref_w, tol, "d_weight")
    assert torch.all(out[~mask] == 0) and torch.all(d_h[~mask] == 0)
    if mask_kind == "none":
        assert torch.all(d_w == 0)
    else:
        assert out[mask].lt(0).all()  # a real log-prob, not a default 0


@pytest.mark.parametrize("impl", IMPL_PARAMS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_max_moves_into_the_last_tile(impl, dtype):
    # The online log-sum-exp must rescale its running sum when a later tile holds a larger logit.
    # A constant feature lifts the last vocab entries (the 3-wide tail tile of V = 4099) by +8, so
    # the row max and most of the probability mass sit after the first 4096-wide tile.
    hidden, weight, targets, mask, d_out = make_inputs(10, 32, 4099, dtype, "mixed", seed=6)
    hidden[:, 0] = 1.0
    weight[:, 0] = 0.0
    weight[-3:, 0] = 8.0
    targets[1], targets[2] = 4098, 5  # one target in the tail, one in the first tile
    mask[1] = mask[2] = True
    out, d_h, d_w = run(IMPLS[impl], hidden, weight, targets, mask, d_out, chunk_rows=4)
    ref, ref_h, ref_w = oracle(hidden, weight, targets, mask, d_out)
    tol = TOL[dtype]
    assert_close(out, ref, tol, "logp")
    assert_close(d_h, ref_h, tol, "d_hidden")
    assert_close(d_w, ref_w, tol, "d_weight")


@pytest.mark.parametrize("impl", IMPL_PARAMS)
@pytest.mark.parametrize("chunk_rows", [1, 3, 64])
def test_chunking_does_not_change_the_result(impl, chunk_rows):
    hidden, weight, targets, mask, d_out = make_inputs(11, 32, 1000, torch.float32, "mixed", seed=1)
    out, d_h, d_w = run(IMPLS[impl], hidden, weight, targets, mask, d_out, chunk_rows=chunk_rows)
    ref, ref_h, ref_w = oracle(hidden, weight, targets, mask, d_out)
    assert_close(out, ref, 1e-4, "logp")
    assert_close(d_h, ref_h, 1e-4, "d_hidden")
    assert_close(d_w, ref_w, 1e-4, "d_weight")


@pytest.mark.parametrize("impl", IMPL_PARAMS)
def test_unmasked_rows_never_reach_the_matmul(impl):
    # NaN in every masked-out hidden row: if those rows were multiplied by the weight, NaN would
    # spread into their outputs and, through the weight gradient, into every row of d_weight.
    hidden, weight, targets, mask, d_out = make_inputs(12, 32, 1000, torch.float32, "mixed", seed=2)
    assert 0 < mask.sum() < 12
    poisoned = hidden.clone()
    poisoned[~mask] = float("nan")
    out, d_h, d_w = run(IMPLS[impl], poisoned, weight, targets, mask, d_out, chunk_rows=4)
    clean = torch.where(mask[:, None], hidden, torch.zeros_like(hidden))
    ref, ref_h, ref_w = oracle(clean, weight, targets, mask, d_out)
    assert torch.isfinite(out).all() and torch.isfinite(d_h).all() and torch.isfinite(d_w).all()
    assert_close(out, ref, 1e-4, "logp")
    assert_close(d_h, ref_h, 1e-4, "d_hidden")
    assert_close(d_w, ref_w, 1e-4, "d_weight")


@pytest.mark.parametrize("impl", IMPL_PARAMS)
def test_forward_only_under_no_grad(impl):
    # GRPO's reference-model log-probs run without autograd.
    hidden, weight, targets, mask, d_out = make_inputs(10, 32, 1000, torch.float32, "mixed", seed=3)
    with torch.no_grad():
        out = IMPLS[impl](hidden, weight, targets, mask)
    ref, _, _ = oracle(hidden, weight, targets, mask, d_out)
    assert not out.requires_grad
    assert_close(out, ref, 1e-4, "logp")


@needs_interpreter
def test_only_hidden_needs_grad_triton():
    # A frozen lm_head: backward must skip d_weight and still get d_hidden right.
    hidden, weight, targets, mask, d_out = make_inputs(8, 32, 1000, torch.float32, "mixed", seed=4)
    h = hidden.clone().requires_grad_()
    masked_logprobs_triton(h, weight, targets, mask, chunk_rows=3).backward(d_out)
    _, ref_h, _ = oracle(hidden, weight, targets, mask, d_out)
    assert weight.grad is None
    assert_close(h.grad, ref_h, 1e-4, "d_hidden")


def test_reference_gradcheck_fp64():
    g = torch.Generator().manual_seed(5)
    hidden = torch.randn(6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(7, 4, generator=g, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 7, (6,), generator=g)
    mask = torch.tensor([True, False, True, True, False, True])
    assert torch.autograd.gradcheck(
        lambda h, w: masked_logprobs_reference(h, w, targets, mask, chunk_rows=2), (hidden, weight))


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cuda_matches_cross_entropy(dtype):
    """The compiled kernels on a vocabulary that is not a multiple of the 4096-wide tile. The oracle
    rounds the logits to the input dtype like both implementations do, then works in fp32."""
    from kernels.logprobs import masked_logprobs
    hidden, weight, targets, mask, d_out = make_inputs(600, 256, 32003, dtype, "mixed", seed=7)
    hidden, weight, targets, mask, d_out = (x.cuda() for x in (hidden, weight, targets, mask, d_out))
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    out = masked_logprobs(h, w, targets, mask)  # CUDA tensors: dispatched to Triton
    out.backward(d_out)
    h32, w32 = hidden.float().requires_grad_(), weight.float().requires_grad_()
    logits = (h32 @ w32.T).to(dtype).float()  # (N, V) rounded like ours
    ref = -F.cross_entropy(logits, torch.where(mask, targets, -100), ignore_index=-100, reduction="none")
    ref.backward(d_out)
    assert_close(out, ref.detach(), {torch.bfloat16: 2e-3, torch.float16: 5e-4}[dtype], "logp")  # ~ulps
    for name, a, b in (("d_hidden", h.grad, h32.grad), ("d_weight", w.grad, w32.grad)):
        err = ((a.float() - b).norm() / b.norm()).item()
        assert err < 2e-2, (name, err)
