"""Masked token log-probs over a large vocabulary, without ever holding the (N, V) logits.

Every training stage reduces to one quantity per token: log p(target | hidden) under the lm_head,

    logp[i] = logit[i, t_i] - logsumexp_j logit[i, j],   logit = hidden @ weight.T,

kept only where mask[i] is true (continuation tokens in stage-1 SFT, the model's own tokens in
stage-2 SFT, actions/reasoning in GRPO) and 0 elsewhere (prompts, tool-written observations).
With 16k tokens and Qwen's 152,064-entry vocabulary, fp32 logits alone are ~10 GB, and half of
the rows are usually masked out, so two things matter: never materialise all logits at once, and
spend no matmul on rows whose log-prob nobody uses.

Design (the Triton path), "chunked, Liger-style", chosen over a fully fused tl.dot kernel:
  1. compact the masked rows (one index_select; `nonzero` syncs once for the count);
  2. per chunk of rows, cuBLAS writes the chunk's logits in the input dtype (bf16) into one
     reused (chunk_rows, V) buffer, and a Triton kernel streams each row once, doing an online
     log-sum-exp in fp32 plus the target-logit gather. Only lse (M,) is saved for backward;
  3. backward recomputes each chunk's logits, a second Triton kernel overwrites them in place with
     d_out * (onehot - softmax), and two more matmuls give d_hidden and d_weight (accumulated
     across chunks with addmm_ in the weight's dtype, so there is no fp32 (V, H) buffer).
  Why: >95% of the FLOPs are the three (four with the recompute) big GEMMs, and cuBLAS runs those
  near the GPU's matmul peak; a hand-written tl.dot tiling would have to match that while also
  doing the softmax. The Triton kernels only do the memory-bound part, where fusion pays: one
  read of bf16 logits instead of the baseline's bf16 -> fp32 copy, log_softmax pass and
  full-size fp32 gradient. The one big extra buffer is a chunk of logits (2048 x 152064 x 2 B =
  0.6 GB). The price is a fourth GEMM (the recompute) against the baseline's three, paid for by
  skipping its ~100 GB of elementwise traffic at N = 16k; a fused tl.dot kernel (Cut
  Cross-Entropy) would also drop the chunk buffer, at the cost of owning the matmul tiling.
  Simplification: the logits are rounded to the input dtype before the fp32 log-sum-exp, exactly
  like the baseline `(hidden @ weight.T).float()`; d_weight is rounded to bf16 once per chunk.

Contract (both entry points): hidden (N, H), weight (V, H) same dtype, targets (N,) int64 (only
read where mask is true; must be in [0, V) there), mask (N,) bool -> (N,) fp32 (fp64 for fp64
inputs), differentiable w.r.t. hidden and weight.

Run:
  python -m kernels.logprobs                      # benchmark on CUDA; a small sanity check on CPU
  python -m pytest -q tests/test_logprobs.py      # CPU, kernels under TRITON_INTERPRET=1
"""
import time

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

import triton
import triton.language as tl

from kernels import use_triton


# ----------------------------------------------------------------------------------------------
# PyTorch reference (also the CPU fallback used in training)
# ----------------------------------------------------------------------------------------------

def _chunk_logprobs(h, weight, t):
    """log p(t | h) for one chunk of already-selected rows: h (C, H), t (C,) -> (C,)."""
    # Round to the input dtype first, then up-cast: same numerics as the GPU path and the baseline.
    # promote_types keeps fp64 inputs in fp64 so gradcheck can run.
    logits = (h @ weight.t()).to(torch.promote_types(h.dtype, torch.float32))  # (C, V)
    # log_softmax = logit - logsumexp(logits), in one fused pass (faster on CPU than the two ops).
    return torch.log_softmax(logits, dim=1).gather(1, t[:, None]).squeeze(1)  # (C,)


def masked_logprobs_reference(hidden, weight, targets, mask, chunk_rows=1024):
    """log p(target | row) where mask is true, else 0; plain PyTorch, differentiable by autograd.

    Rows with mask false are dropped before any matmul. The kept rows go through in chunks of
    `chunk_rows`, each under torch.utils.checkpoint, so the backward recomputes one chunk's logits
    at a time instead of keeping every chunk's fp32 logits alive from the forward.

    Bytes moved, per chunk of C rows, counted in units of one fp32 (C, V) pass (C*V*4 bytes):
    forward ~5 (matmul writes the logits, log_softmax reads them for the max, again for the sum,
    and once more to write its output); backward ~12 (the same ~5 again for the recompute, a zero
    fill + scatter for gather's grad, ~4 for log_softmax's backward, 2 for the two matmuls reading
    the gradient). ~17 passes against ~3.5 half-width (bf16) ones for the Triton path below. Each
    of the three matmuls per chunk also re-reads the whole (V, H) lm_head. Peak: one chunk's few
    fp32 (C, V) tensors (C*V*4 = 0.6 GB at C = 1024, V = 152k), never all N rows.
    """
    assert hidden.dim() == 2 and weight.dim() == 2 and hidden.shape[1] == weight.shape[1]
    out_dtype = torch.promote_types(hidden.dtype, torch.float32)
    rows = mask.nonzero().squeeze(1)  # (M,) masked-row indices; .nonzero() syncs on a GPU
    h = hidden.index_select(0, rows)  # (M, H): masked-out rows never reach a matmul
    t = targets.index_select(0, rows)  # (M,)
    use_checkpoint = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    pieces = []
    for s in range(0, rows.numel(), chunk_rows):
        h_c, t_c = h[s:s + chunk_rows], t[s:s + chunk_rows]
        if use_checkpoint:
            pieces.append(checkpoint(_chunk_logprobs, h_c, weight, t_c, use_reentrant=False))
        else:
            pieces.append(_chunk_logprobs(h_c, weight, t_c))
    if not pieces:  # no masked rows: still return an output attached to the graph (zero grads)
        pieces.append(_chunk_logprobs(h, weight, t))
    logp = torch.cat(pieces)  # (M,)
    # Scatter back; index_copy is differentiable w.r.t. the source, so unmasked rows get zero grad.
    out = hidden.new_zeros(hidden.shape[0], dtype=out_dtype)  # (N,)
    return out.index_copy(0, rows, logp.to(out_dtype))


# ----------------------------------------------------------------------------------------------
# Triton kernels: one program per row of a chunk's logits, streaming the vocab in BLOCK_V tiles
# ----------------------------------------------------------------------------------------------

@triton.jit
def _lse_target_kernel(logits_ptr, row_stride, targets_ptr, lse_ptr, logp_ptr, V,
                       BLOCK_V: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)  # int64: row * row_stride can pass 2**31 for big chunks
    row_ptr = logits_ptr + row * row_stride
    cols = tl.arange(0, BLOCK_V)
    # First tile outside the loop so the running max starts as a real fp32 value (no -inf - -inf).
    x = tl.load(row_ptr + cols, mask=cols < V, other=float("-inf")).to(tl.float32)
    m = tl.max(x, axis=0)  # running max of the row (scalar)
    acc = tl.exp(x - m)  # (BLOCK_V,) per-lane partial sums of exp(logit - m), reduced at the end
    for start in range(BLOCK_V, V, BLOCK_V):
        # Online log-sum-exp: rescale the partial sums to the new max (one exp per tile), add this
        # tile (one exp per element). One cross-warp reduction (the max) per tile.
        in_vocab = start + cols < V  # the last tile runs past V unless V % BLOCK_V == 0
        x = tl.load(row_ptr + start + cols, mask=in_vocab, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(x, axis=0))
        acc = acc * tl.exp(m - m_new) + tl.exp(x - m_new)
        m = m_new
    lse = m + tl.log(tl.sum(acc, axis=0))
    # The target logit is one scalar load from the same (input-dtype) row.
    target = tl.load(targets_ptr + row)
    x_target = tl.load(row_ptr + target).to(tl.float32)
    tl.store(lse_ptr + row, lse)
    tl.store(logp_ptr + row, x_target - lse)


@triton.jit
def _logits_grad_kernel(logits_ptr, row_stride, targets_ptr, lse_ptr, dout_ptr, V,
                        BLOCK_V: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    row_ptr = logits_ptr + row * row_stride
    cols = tl.arange(0, BLOCK_V)
    lse = tl.load(lse_ptr + row)
    d_out = tl.load(dout_ptr + row)
    target = tl.load(targets_ptr + row)
    for start in range(0, V, BLOCK_V):
        in_vocab = start + cols < V
        x = tl.load(row_ptr + start + cols, mask=in_vocab, other=0.0).to(tl.float32)
        # d logp / d logit_j = [j == target] - softmax_j, times the upstream grad of this row.
        p = tl.exp(x - lse)
        grad = d_out * ((start + cols == target).to(tl.float32) - p)
        # In place: the logits buffer becomes the gradient buffer, no second (C, V) tensor.
        tl.store(row_ptr + start + cols, grad.to(logits_ptr.dtype.element_ty), mask=in_vocab)


# ----------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------

def _block_v(V):
    # 4096 lanes = 16 elements per thread at 8 warps: long enough coalesced loads for bandwidth.
    return min(triton.next_power_of_2(V), 4096)


def _lse_target(logits, targets, lse, logp):
    """Fill lse (C,) and logp (C,) fp32 from a chunk's logits (C, V)."""
    C, V = logits.shape
    _lse_target_kernel[(C,)](logits, logits.stride(0), targets, lse, logp, V,
                             BLOCK_V=_block_v(V), num_warps=8)


def _logits_grad_(logits, targets, lse, d_out):
    """Overwrite a chunk's logits (C, V) with d_out * (onehot(target) - softmax), in place."""
    C, V = logits.shape
    _logits_grad_kernel[(C,)](logits, logits.stride(0), targets, lse, d_out, V,
                              BLOCK_V=_block_v(V), num_warps=8)


# ----------------------------------------------------------------------------------------------
# Autograd Function
# ----------------------------------------------------------------------------------------------

class MaskedLogprobs(torch.autograd.Function):

    @staticmethod
    def forward(ctx, hidden, weight, targets, mask, chunk_rows):
        assert hidden.dim() == 2 and weight.dim() == 2 and hidden.shape[1] == weight.shape[1]
        assert hidden.dtype == weight.dtype, "hidden and weight must share a dtype (one matmul)"
        N, V = hidden.shape[0], weight.shape[0]
        rows = mask.nonzero().squeeze(1)  # (M,); the one host sync: M sizes every buffer below
        M = rows.numel()
        h = hidden.index_select(0, rows)  # (M, H) contiguous
        t = targets.index_select(0, rows).contiguous()  # (M,) int64
        lse = torch.empty(M, device=hidden.device, dtype=torch.float32)  # (M,) saved for backward
        logp = torch.empty(M, device=hidden.device, dtype=torch.float32)  # (M,)
        C = max(1, min(chunk_rows, M))  # max(1, .): range() below needs a step even when M == 0
        buf = hidden.new_empty(C, V)  # (C, V): the only large allocation, reused by every chunk
        for s in range(0, M, C):
            e = min(s + C, M)
            logits = buf[:e - s]  # first rows of buf: still contiguous
            torch.mm(h[s:e], weight.t(), out=logits)  # cuBLAS, input dtype, fp32 accumulate
            _lse_target(logits, t[s:e], lse[s:e], logp[s:e])
        ctx.save_for_backward(h, weight, t, rows, lse)
        ctx.N, ctx.chunk_rows = N, chunk_rows
        return torch.zeros(N, device=hidden.device, dtype=torch.float32).index_copy_(0, rows, logp)

    @staticmethod
    def backward(ctx, grad_out):
        h, weight, t, rows, lse = ctx.saved_tensors
        M, V = h.shape[0], weight.shape[0]
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        d_out = grad_out.index_select(0, rows).float().contiguous()  # (M,) rows with a log-prob
        d_h = h.new_empty(h.shape) if need_h else None  # (M, H)
        d_w = torch.zeros_like(weight) if need_w else None  # (V, H), accumulated over chunks
        C = max(1, min(ctx.chunk_rows, M))
        buf = h.new_empty(C, V)
        for s in range(0, M, C):
            e = min(s + C, M)
            g = buf[:e - s]  # (c, V)
            torch.mm(h[s:e], weight.t(), out=g)  # recompute this chunk's logits
            _logits_grad_(g, t[s:e], lse[s:e], d_out[s:e])  # g is now d logp / d logits
            if need_h:
                torch.mm(g, weight, out=d_h[s:e])  # (c, H)
            if need_w:
                d_w.addmm_(g.t(), h[s:e])  # (V, H) += (V, c) @ (c, H); rounded to weight dtype
        d_hidden = None
        if need_h:
            d_hidden = torch.zeros(ctx.N, h.shape[1], device=h.device, dtype=h.dtype)
            d_hidden.index_copy_(0, rows, d_h)  # unmasked rows: exactly zero
        return d_hidden, d_w, None, None, None


def masked_logprobs_triton(hidden, weight, targets, mask, chunk_rows=2048):
    """Same contract as masked_logprobs_reference, on Triton kernels (GPU or TRITON_INTERPRET=1).

    `chunk_rows` bounds the one big buffer to chunk_rows x V in the input dtype; 2048 keeps the
    d_weight addmm_ compute-bound (K = 2048) while the buffer stays ~0.6 GB at V = 152k in bf16.
    """
    return MaskedLogprobs.apply(hidden, weight, targets, mask, chunk_rows)


def masked_logprobs(hidden, weight, targets, mask):
    """Masked token log-probs: masked_logprobs_triton for CUDA tensors, masked_logprobs_reference
    otherwise (AUTOCOA_KERNELS overrides; see kernels/__init__.py)."""
    if use_triton(hidden):
        return masked_logprobs_triton(hidden, weight, targets, mask)
    return masked_logprobs_reference(hidden, weight, targets, mask)


# ----------------------------------------------------------------------------------------------
# Benchmark: python -m kernels.logprobs
# ----------------------------------------------------------------------------------------------

def _baseline(hidden, weight, targets, mask):
    """What a plain training loop writes: full logits in the input dtype, F.cross_entropy in fp32."""
    logits = (hidden @ weight.T).float()  # (N, V): the fp32 copy is the memory the kernels avoid
    return -F.cross_entropy(logits, torch.where(mask, targets, -100), ignore_index=-100, reduction="none")


def _fwd_bwd(fn, hidden, weight, targets, mask, d_out):
    hidden.grad = weight.grad = None
    fn(hidden, weight, targets, mask).backward(d_out)


def _measure_cuda(fn, args, reps=3):
    """(ms per forward+backward, peak GiB allocated above what was live before the call)."""
    _fwd_bwd(fn, *args)  # warm-up: Triton compile, cuBLAS heuristics
    args[0].grad = args[1].grad = None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    _fwd_bwd(fn, *args)
    torch.cuda.synchronize()
    peak = (torch.cuda.max_memory_allocated() - base) / 2**30
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        _fwd_bwd(fn, *args)
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps, peak


def bench(copy_gbs=None):
    """Forward+backward table: ours vs F.cross_entropy on full logits and vs the chunked torch
    reference (ms, peak GiB, speedup = their time / our time), then the lse kernel's own GB/s."""
    from kernels.attention import _time_ms, copy_bandwidth_gbs
    N, H, V, dtype = 16384, 3584, 152064, torch.bfloat16
    print(f"== masked log-probs: {torch.cuda.get_device_name()}: N={N} H={H} V={V} {dtype}, forward+backward")
    torch.manual_seed(0)
    hidden = (torch.randn(N, H, device="cuda") * 0.5).to(dtype).requires_grad_()
    weight = (torch.randn(V, H, device="cuda") / H**0.5).to(dtype).requires_grad_()
    targets = torch.randint(0, V, (N,), device="cuda")
    d_out = torch.randn(N, device="cuda")

    # Correctness in bf16 against the baseline (50% masked, so the zero rows are checked too).
    mask = torch.rand(N, device="cuda") < 0.5
    grads = []
    for fn in (_baseline, masked_logprobs_triton):
        hidden.grad = weight.grad = None
        out = fn(hidden, weight, targets, mask)
        out.backward(d_out)
        grads.append((out.detach(), hidden.grad.clone(), weight.grad.clone()))
    hidden.grad = weight.grad = None

    def rel(a, b):
        return ((a.float() - b.float()).norm() / b.float().norm()).item()

    (o0, h0, w0), (o1, h1, w1) = grads
    print(f"bf16 check vs F.cross_entropy: max |dlogp| {(o0 - o1).abs().max().item():.2e}  "
          f"rel err d_hidden {rel(h1, h0):.2e}  d_weight {rel(w1, w0):.2e}")
    del grads, o0, h0, w0, o1, h1, w1

    print("speedup = their time / our time, memory = their peak / our peak (> 1: ours is better)")
    print(f"{'masked':>6} | {'ours ms':>8} {'GiB':>5} | {'cross_entropy ms':>16} {'GiB':>5} {'speedup':>7} "
          f"{'memory':>6} | {'chunked ref ms':>14} {'GiB':>5} {'speedup':>7} {'memory':>6}")
    for frac in (0.0, 0.5):
        mask = torch.rand(N, device="cuda") >= frac
        args = (hidden, weight, targets, mask, d_out)
        t_ours, m_ours = _measure_cuda(masked_logprobs_triton, args)
        t_ce, m_ce = _measure_cuda(_baseline, args)
        t_ref, m_ref = _measure_cuda(masked_logprobs_reference, args)
        print(f"{frac:>6.0%} | {t_ours:>8.1f} {m_ours:>5.2f} | {t_ce:>16.1f} {m_ce:>5.2f} {t_ce / t_ours:>6.2f}x "
              f"{m_ce / m_ours:>5.1f}x | {t_ref:>14.1f} {m_ref:>5.2f} {t_ref / t_ours:>6.2f}x {m_ref / m_ours:>5.1f}x")

    # The memory-bound part alone: one chunk's log-sum-exp pass reads the (C, V) logits once.
    copy_gbs = copy_gbs or copy_bandwidth_gbs()
    C = 2048
    logits = torch.randn(C, V, device="cuda").to(dtype)
    lse, logp = (torch.empty(C, device="cuda") for _ in range(2))
    ms = _time_ms(lambda: _lse_target(logits, targets[:C], lse, logp), reps=20, flush_l2=True)
    gbs = logits.numel() * logits.element_size() / ms / 1e6
    print(f"lse kernel on a {C} x {V} chunk: {ms:.3f} ms, {gbs:.0f} GB/s = {gbs / copy_gbs:.0%} of the "
          f"device copy bandwidth ({copy_gbs:.0f} GB/s, read + written)")


def _sanity_cpu():
    print("no CUDA device: the benchmark needs a GPU. Small check of the torch reference (the CPU "
          "fallback) against F.cross_entropy on full logits instead.")
    N, H, V = 1024, 64, 4099
    torch.manual_seed(0)
    hidden = torch.randn(N, H, requires_grad=True)
    weight = (torch.randn(V, H) / H**0.5).requires_grad_()
    targets = torch.randint(0, V, (N,))
    d_out = torch.randn(N)
    print(f"N={N} H={H} V={V} fp32, forward+backward; speedup = cross_entropy time / reference time")
    for frac in (0.0, 0.5):
        mask = torch.rand(N) >= frac
        results = []
        for fn in (_baseline, masked_logprobs_reference):
            _fwd_bwd(fn, hidden, weight, targets, mask, d_out)  # warm-up
            t0 = time.perf_counter()
            for _ in range(3):
                _fwd_bwd(fn, hidden, weight, targets, mask, d_out)
            ms = (time.perf_counter() - t0) / 3 * 1e3
            results.append((ms, fn(hidden, weight, targets, mask).detach(), hidden.grad.clone()))
        (t_b, o_b, g_b), (t_r, o_r, g_r) = results
        print(f"{frac:>4.0%} masked: cross_entropy {t_b:6.1f} ms  reference {t_r:6.1f} ms  "
              f"speedup {t_b / t_r:.2f}x  max |dlogp| {(o_b - o_r).abs().max().item():.1e}  "
              f"max |d d_hidden| {(g_b - g_r).abs().max().item():.1e}")


if __name__ == "__main__":
    if torch.cuda.is_available():
        bench()
    else:
        _sanity_cpu()
