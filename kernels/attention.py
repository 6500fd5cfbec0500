"""Attention for training/prefill (FlashAttention-2 style): forward and backward.

The KV-cache decode path (flash-decoding, decode_attention and its reference) lives in
kernels/decode.py, which reuses this file's _check, _check_head_dim and benchmark helpers.

  attention_triton(q, k, v, causal)          q (B, Hq, T, D), k/v (B, Hkv, S, D) -> (B, Hq, T, D)
      Forward: one program per (query block, batch x query head) streams the key blocks with an
      online softmax in fp32 (exp2 domain) and saves only the row log-sum-exp; no T x S matrix
      ever exists. Backward: dO.O row sums (delta), then one kernel for dQ (loop over keys) and
      one for dK/dV (loop over queries), both recomputing P from the saved log-sum-exp.
      attention_reference (torch SDPA) has the same contract and is also the CPU fallback.

Conventions:
  - Grouped-query attention (Qwen2: 28 query heads over 4 kv heads): query head h reads kv head
    h // (Hq // Hkv) straight from k/v, no repeat_interleave copy.
  - Causal masks align bottom-right: with T queries over S keys, query i sees keys j <= S - T + i
    (the T queries are the last T positions). So causal needs T <= S; training has T == S.
  - Softmax in fp32; inputs fp16/bf16/fp32; outputs in the input dtype; default scale D ** -0.5.

Simplified on purpose (vs FlashAttention-2/3 and the Triton tutorial):
  - D must be a power of two in [16, 128] (Qwen uses 64 and 128): no padded head dim.
  - No dropout, no varlen/packed sequences, no TMA / warp specialisation / FP8.
  - GQA backward: each dK/dV program handles ONE query head and writes its share to a per-query-
    head fp32 buffer (B, Hq, S, D) that torch sums over the group afterwards. Looping over the group
    inside the kernel would launch Hq // Hkv times fewer programs (too few to fill a GPU at batch 1
    and short lengths) and atomics would be non-deterministic. Cost: a transient 2 x B*Hq*S*D*4
    bytes, read once more by the sum. Without GQA the kernel writes dK/dV directly.
  - The output is allocated (B, T, Hq, D) in memory and returned as a (B, Hq, T, D) view, so the
    caller's o.transpose(1, 2).reshape(B, T, C) costs nothing.
  - Block sizes are autotuned on CUDA over a few configs (keyed on head dim, causal, dtype and the
    length rounded to a power of two, so variable lengths do not retune every step), drawn from a
    list per input width and GPU family that tests/test_aot.py compiles for sm_90 and sm_80 on a CPU
    (shared memory within the limit, no register spills); under the CPU interpreter a single small
    config is used so tests stay fast and exercise many blocks.
  - fp32 inputs: tl.dot rounds them to TF32 on a GPU (10-bit mantissa, like torch with
    allow_tf32), so fp32 results there match fp16's accuracy, not the interpreter's exact fp32.

Run:
  python -m kernels.attention                      # CUDA: bf16 check + benchmark vs SDPA; CPU: tiny sanity run
  python -m pytest -q tests/test_attention.py      # CPU, kernels under TRITON_INTERPRET=1
"""
import os
import statistics
import sys

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from kernels import use_triton

LOG2E = 1.4426950408889634  # softmax runs in base 2: exp(x) = exp2(x * log2(e)), exp2 is one instruction
_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


# ----------------------------------------------------------------------------------------------
# PyTorch references (also the CPU fallback)
# ----------------------------------------------------------------------------------------------

def _check(q, k, v):
    assert q.dim() == 4 and k.shape == v.shape and q.shape[0] == k.shape[0] and q.shape[3] == k.shape[3], \
        f"want q (B, Hq, T, D), k/v (B, Hkv, S, D); got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
    assert q.shape[1] % k.shape[1] == 0, f"Hq={q.shape[1]} must be a multiple of Hkv={k.shape[1]}"


def attention_reference(q, k, v, causal=True, sm_scale=None):
    """softmax(q k^T * scale [+ bottom-right causal mask]) v with torch SDPA, in fp32 (fp64 stays fp64).

    q (B, Hq, T, D), k/v (B, Hkv, S, D) -> (B, Hq, T, D) in q's dtype; differentiable by autograd.
    Bytes moved: SDPA reads q, k, v once and writes o (its CPU/flash paths never build T x S in
    memory), but the fp32 up-cast here adds one copy of q, k, v and o for half-precision inputs.
    """
    _check(q, k, v)
    T, S = q.shape[2], k.shape[2]
    assert not causal or T <= S, f"causal attention needs T <= S (bottom-right aligned); got T={T}, S={S}"
    dt = torch.promote_types(q.dtype, torch.float32)
    mask = None
    if causal and T < S:  # SDPA's is_causal is top-left aligned, so spell the bottom-right mask out
        mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(S - T)  # (T, S)
    out = F.scaled_dot_product_attention(
        q.to(dt), k.to(dt), v.to(dt), attn_mask=mask, is_causal=causal and T == S,
        scale=sm_scale, enable_gqa=q.shape[1] != k.shape[1])
    return out.to(q.dtype)


# ----------------------------------------------------------------------------------------------
# Triton kernels: forward
# ----------------------------------------------------------------------------------------------

@triton.jit
def _fwd_inner(acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_kd, stride_vn, stride_vd,
               offs_m, offs_d, lo, hi, S, diag, qk_scale,
               BLOCK_N: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr):
    """Stream key blocks [lo, hi) into the running (acc, l_i, m_i) of one query block.

    MASKED=False is the fast path for blocks that are in bounds and fully visible to every query
    in the block; MASKED=True handles the diagonal (causal) and the ragged last block (j >= S).
    """
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        kT_ptrs = k_base + offs_n[None, :] * stride_kn + offs_d[:, None] * stride_kd  # (D, BLOCK_N): K^T
        v_ptrs = v_base + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd  # (BLOCK_N, D)
        # step 1: load this block of keys and values (zeros past S, masked out of the softmax below)
        if MASKED:
            kT = tl.load(kT_ptrs, mask=offs_n[None, :] < S, other=0.0)
            v = tl.load(v_ptrs, mask=offs_n[:, None] < S, other=0.0)
        else:
            kT = tl.load(kT_ptrs)
            v = tl.load(v_ptrs)
        # step 2: scores in the log2 domain, fp32 accumulate; -inf where a key is not visible
        s = tl.dot(q, kT) * qk_scale  # (BLOCK_M, BLOCK_N)
        if MASKED:
            keep = offs_n[None, :] < S
            if CAUSAL:
                keep = keep & (offs_n[None, :] <= offs_m[:, None] + diag)  # bottom-right: j <= i + S - T
            s = tl.where(keep, s, float("-inf"))
        # step 3: online softmax. Every row has already seen key 0 (or sees it now), so m_new is finite.
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.exp2(s - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)  # rescales what was accumulated under the old max
        l_i = l_i * alpha + tl.sum(p, 1)
        # step 4: accumulate P V (P rounded to the input dtype for the tensor cores, as FA2 does)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _key_range(start_m, S, diag, CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Key blocks for queries [start_m, start_m + BLOCK_M): [0, full) are in bounds and visible to
    every row (no mask needed), [full, hi) hold the diagonal and/or the ragged end (j >= S)."""
    if CAUSAL:
        hi = tl.minimum(S, start_m + BLOCK_M + diag)  # the block's last row sees keys < this
        full = tl.minimum((start_m + diag + 1) // BLOCK_N * BLOCK_N, S // BLOCK_N * BLOCK_N)
    else:
        hi = S
        full = S // BLOCK_N * BLOCK_N
    return full, hi


def _arch(device):
    """9 for Hopper and later (sm_90: 227 KB of shared memory per block, wgmma), 8 before (sm_80: 163 KB)."""
    return 9 if torch.cuda.get_device_capability(device)[0] >= 9 else 8


def _configs(choices, interpreter_choice):
    """Autotune candidates and their prune. choices maps (element bytes, _arch) to the configs
    (BLOCK_M, BLOCK_N, num_warps, num_stages) allowed for that input width on that GPU family; the
    autotuner holds their union and the prune keeps the allowed ones for Q's dtype and device.
    Under the CPU interpreter: one small config."""
    if _INTERPRET:
        return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s)
                for m, n, w, s in [interpreter_choice]], None
    union = sorted({c for cs in choices.values() for c in cs})
    configs = [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s) for m, n, w, s in union]

    def prune(configs, named_args, **kwargs):
        q = named_args["Q"]
        allowed = choices[(q.element_size(), _arch(q.device))]
        return [c for c in configs
                if (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages) in allowed]
    return configs, {"early_config_prune": prune}


# Candidates per (input bytes, GPU family): each compiles at every head dim up to 128 within the
# family's shared memory and without register spills (checked by tests/test_aot.py, which compiles
# them all for sm_90 and sm_80 on a CPU). fp32 inputs double every tile, so they get smaller blocks
# and 2 stages; sm_80 has no wgmma and spills sooner. Interpreter: BLOCK_M != BLOCK_N on purpose, so
# the tests would catch a swapped block size.
_FWD_CONFIGS, _FWD_PRUNE = _configs({
    (2, 9): [(128, 64, 8, 3), (128, 128, 8, 3), (128, 64, 8, 4), (64, 64, 4, 3)],
    (2, 8): [(128, 64, 8, 3), (128, 64, 8, 4), (64, 64, 4, 3)],
    (4, 9): [(64, 64, 8, 2), (128, 32, 8, 2), (64, 32, 4, 3), (32, 64, 4, 2)],
    (4, 8): [(64, 64, 8, 2), (128, 32, 8, 2), (64, 32, 4, 3), (32, 64, 4, 2)],
}, (32, 16, 4, 1))
_TUNE_KEY = ["LEN_BUCKET", "HEAD_DIM", "CAUSAL"]


@triton.autotune(configs=_FWD_CONFIGS, key=_TUNE_KEY, prune_configs_by=_FWD_PRUNE)
@triton.jit
def _attn_fwd(Q, K, V, O, LSE,
              stride_qb, stride_qh, stride_qt, stride_qd, stride_kb, stride_kh, stride_kn, stride_kd,
              stride_vb, stride_vh, stride_vn, stride_vd, stride_ob, stride_oh, stride_ot, stride_od,
              H, T, S, qk_scale, LEN_BUCKET,
              GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    # step 1: this program owns query rows [start_m, start_m + BLOCK_M) of one (batch, query head);
    # its kv head is shared with the other GROUP - 1 query heads of the group and read in place.
    start_m = tl.program_id(0) * BLOCK_M
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)  # int64: batch * stride can pass 2^31 elements
    h = (bh % H).to(tl.int64)
    hk = h // GROUP
    q_base = Q + b * stride_qb + h * stride_qh
    k_base = K + b * stride_kb + hk * stride_kh
    v_base = V + b * stride_vb + hk * stride_vh
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    # step 2: load the query block once; rows past T are zeros and are never stored
    q = tl.load(q_base + offs_m[:, None] * stride_qt + offs_d[None, :] * stride_qd,
                mask=offs_m[:, None] < T, other=0.0)
    # step 3: key range. Blocks in [0, full) are unmasked; [full, hi) need the per-element mask.
    diag = S - T  # query i sees keys j <= i + diag
    full, hi = _key_range(start_m, S, diag, CAUSAL, BLOCK_M, BLOCK_N)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_kd, stride_vn, stride_vd,
                               offs_m, offs_d, 0, full, S, diag, qk_scale, BLOCK_N, False, CAUSAL)
    acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_kd, stride_vn, stride_vd,
                               offs_m, offs_d, full, hi, S, diag, qk_scale, BLOCK_N, True, CAUSAL)
    # step 4: normalise, store O in the input dtype and the base-2 log-sum-exp for the backward
    row_ok = offs_m < T
    o = acc / l_i[:, None]
    o_base = O + b * stride_ob + h * stride_oh
    tl.store(o_base + offs_m[:, None] * stride_ot + offs_d[None, :] * stride_od,
             o.to(O.dtype.element_ty), mask=row_ok[:, None])
    tl.store(LSE + bh.to(tl.int64) * T + offs_m, m_i + tl.log2(l_i), mask=row_ok)


# ----------------------------------------------------------------------------------------------
# Triton kernels: backward
#   With s = scale * q k^T, P = softmax(s), O = P V and delta_i = sum_d dO_id O_id:
#   dV = P^T dO,  dP = dO V^T,  dS = P * (dP - delta),  dQ = scale * dS K,  dK = scale * dS^T Q.
#   P is recomputed from the saved base-2 log-sum-exp: P = exp2(s * log2(e) - lse2).
# ----------------------------------------------------------------------------------------------

@triton.jit
def _bwd_dq_inner(dq, q, do, lse, delta, k_base, v_base, stride_kn, stride_kd, stride_vn, stride_vd,
                  offs_m, offs_d, lo, hi, S, diag, qk_scale,
                  BLOCK_N: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr):
    """Accumulate dQ of one query block over key blocks [lo, hi) (same split as the forward)."""
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        kT_ptrs = k_base + offs_n[None, :] * stride_kn + offs_d[:, None] * stride_kd  # (D, BLOCK_N)
        vT_ptrs = v_base + offs_n[None, :] * stride_vn + offs_d[:, None] * stride_vd  # (D, BLOCK_N)
        # step 1: load K^T, V^T for this key block
        if MASKED:
            kT = tl.load(kT_ptrs, mask=offs_n[None, :] < S, other=0.0)
            vT = tl.load(vT_ptrs, mask=offs_n[None, :] < S, other=0.0)
        else:
            kT = tl.load(kT_ptrs)
            vT = tl.load(vT_ptrs)
        # step 2: recompute P from the saved log-sum-exp; zero where the key is invisible or past S
        p = tl.exp2(tl.dot(q, kT) * qk_scale - lse[:, None])  # (BLOCK_M, BLOCK_N)
        if MASKED:
            keep = offs_n[None, :] < S
            if CAUSAL:
                keep = keep & (offs_n[None, :] <= offs_m[:, None] + diag)
            p = tl.where(keep, p, 0.0)
        # step 3: dS = P * (dO V^T - delta); dQ += dS K (scale applied once at the end)
        dp = tl.dot(do, vT)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(kT.dtype), tl.trans(kT))
    return dq


_DQ_CONFIGS, _DQ_PRUNE = _configs({
    (2, 9): [(128, 64, 8, 3), (128, 32, 8, 3), (64, 64, 4, 3), (64, 32, 4, 2)],
    (2, 8): [(64, 64, 4, 3), (64, 32, 4, 2)],
    (4, 9): [(64, 32, 8, 2), (32, 64, 8, 2), (32, 32, 4, 2)],
    (4, 8): [(64, 32, 8, 2), (32, 64, 8, 2), (32, 32, 4, 2)],
}, (32, 16, 4, 1))


@triton.autotune(configs=_DQ_CONFIGS, key=_TUNE_KEY, prune_configs_by=_DQ_PRUNE)
@triton.jit
def _attn_bwd_dq(Q, K, V, DO, DQ, LSE, DELTA,
                 stride_qb, stride_qh, stride_qt, stride_qd, stride_kb, stride_kh, stride_kn, stride_kd,
                 stride_vb, stride_vh, stride_vn, stride_vd, stride_dob, stride_doh, stride_dot, stride_dod,
                 stride_dqb, stride_dqh, stride_dqt, stride_dqd,
                 H, T, S, qk_scale, sm_scale, LEN_BUCKET,
                 GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    # step 1: one program per (query block, batch x query head), exactly like the forward
    start_m = tl.program_id(0) * BLOCK_M
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    hk = h // GROUP
    k_base = K + b * stride_kb + hk * stride_kh
    v_base = V + b * stride_vb + hk * stride_vh
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < T
    # step 2: load q, dO and the per-row lse and delta once (rows past T: zeros, never stored)
    q = tl.load(Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qt + offs_d[None, :] * stride_qd,
                mask=row_ok[:, None], other=0.0)
    do = tl.load(DO + b * stride_dob + h * stride_doh + offs_m[:, None] * stride_dot + offs_d[None, :] * stride_dod,
                 mask=row_ok[:, None], other=0.0)
    lse = tl.load(LSE + bh.to(tl.int64) * T + offs_m, mask=row_ok, other=0.0)
    delta = tl.load(DELTA + bh.to(tl.int64) * T + offs_m, mask=row_ok, other=0.0)
    # step 3: the forward's key range: unmasked blocks first, then the diagonal / ragged tail
    diag = S - T
    full, hi = _key_range(start_m, S, diag, CAUSAL, BLOCK_M, BLOCK_N)
    dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    dq = _bwd_dq_inner(dq, q, do, lse, delta, k_base, v_base, stride_kn, stride_kd, stride_vn, stride_vd,
                       offs_m, offs_d, 0, full, S, diag, qk_scale, BLOCK_N, False, CAUSAL)
    dq = _bwd_dq_inner(dq, q, do, lse, delta, k_base, v_base, stride_kn, stride_kd, stride_vn, stride_vd,
                       offs_m, offs_d, full, hi, S, diag, qk_scale, BLOCK_N, True, CAUSAL)
    # step 4: dQ = scale * dS K
    tl.store(DQ + b * stride_dqb + h * stride_dqh + offs_m[:, None] * stride_dqt + offs_d[None, :] * stride_dqd,
             (dq * sm_scale).to(DQ.dtype.element_ty), mask=row_ok[:, None])


@triton.jit
def _bwd_dkdv_inner(dk, dv, k, v, q_base, do_base, lse_base, delta_base,
                    stride_qt, stride_qd, stride_dot, stride_dod,
                    offs_n, offs_d, lo, hi, T, diag, qk_scale,
                    BLOCK_M: tl.constexpr, MASKED: tl.constexpr):
    """Accumulate dK, dV of one key block over query blocks [lo, hi), working on transposed tiles
    (keys x queries) so that no P^T / dS^T transpose is needed."""
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        row_ok = offs_m < T
        # step 1: load Q^T, dO and the rows' lse / delta. Rows past T get lse = +inf, so their P
        # is exactly 0 and they contribute nothing (no extra mask needed).
        qT = tl.load(q_base + offs_d[:, None] * stride_qd + offs_m[None, :] * stride_qt,
                     mask=row_ok[None, :], other=0.0)  # (D, BLOCK_M)
        do = tl.load(do_base + offs_m[:, None] * stride_dot + offs_d[None, :] * stride_dod,
                     mask=row_ok[:, None], other=0.0)  # (BLOCK_M, D)
        lse = tl.load(lse_base + offs_m, mask=row_ok, other=float("inf"))
        delta = tl.load(delta_base + offs_m, mask=row_ok, other=0.0)
        # step 2: P^T recomputed; on the diagonal keep only key j <= query i + diag
        pT = tl.exp2(tl.dot(k, qT) * qk_scale - lse[None, :])  # (BLOCK_N, BLOCK_M)
        if MASKED:
            pT = tl.where(offs_n[:, None] <= offs_m[None, :] + diag, pT, 0.0)
        # step 3: dV += P^T dO;  dS^T = P^T * (V dO^T - delta);  dK += dS^T Q (scale at the end)
        dv += tl.dot(pT.to(do.dtype), do)
        dpT = tl.dot(v, tl.trans(do))
        dsT = pT * (dpT - delta[None, :])
        dk += tl.dot(dsT.to(qT.dtype), tl.trans(qT))
    return dk, dv


# dK/dV: a tall key block (BLOCK_N) keeps both fp32 accumulators resident; the query block is short.
_DKDV_CONFIGS, _DKDV_PRUNE = _configs({
    (2, 9): [(64, 128, 8, 3), (32, 128, 8, 3), (64, 64, 8, 3), (32, 64, 4, 2)],
    (2, 8): [(64, 64, 8, 3), (32, 32, 4, 2)],
    (4, 9): [(32, 32, 8, 2), (32, 32, 4, 2), (16, 32, 4, 2)],
    (4, 8): [(32, 64, 8, 2), (32, 32, 8, 2), (16, 32, 4, 2)],
}, (16, 32, 4, 1))


@triton.autotune(configs=_DKDV_CONFIGS, key=_TUNE_KEY, prune_configs_by=_DKDV_PRUNE)
@triton.jit
def _attn_bwd_dkdv(Q, K, V, DO, DK, DV, LSE, DELTA,
                   stride_qb, stride_qh, stride_qt, stride_qd, stride_kb, stride_kh, stride_kn, stride_kd,
                   stride_vb, stride_vh, stride_vn, stride_vd, stride_dob, stride_doh, stride_dot, stride_dod,
                   stride_dkb, stride_dkh, stride_dkn, stride_dkd, stride_dvb, stride_dvh, stride_dvn, stride_dvd,
                   H, T, S, qk_scale, sm_scale, LEN_BUCKET,
                   GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    # step 1: one program per (key block, batch x QUERY head). It writes that query head's share of
    # dK/dV to DK/DV[b, h]; with GQA those are per-query-head buffers the launcher sums per group.
    start_n = tl.program_id(0) * BLOCK_N
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    hk = h // GROUP
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    key_ok = offs_n < S
    # step 2: this key block's K and V stay in registers for the whole loop
    k = tl.load(K + b * stride_kb + hk * stride_kh + offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kd,
                mask=key_ok[:, None], other=0.0)
    v = tl.load(V + b * stride_vb + hk * stride_vh + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd,
                mask=key_ok[:, None], other=0.0)
    q_base = Q + b * stride_qb + h * stride_qh
    do_base = DO + b * stride_dob + h * stride_doh
    lse_base = LSE + bh.to(tl.int64) * T
    delta_base = DELTA + bh.to(tl.int64) * T
    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    # step 3: query range. Key j is seen by queries i >= j - diag, so with causal masking the
    # blocks starting before `mid` straddle the diagonal (masked), the ones after are fully visible.
    diag = S - T
    if CAUSAL:
        lo = tl.maximum(start_n - diag, 0) // BLOCK_M * BLOCK_M
        mid = tl.cdiv(tl.maximum(start_n + BLOCK_N - 1 - diag, 0), BLOCK_M) * BLOCK_M
        dk, dv = _bwd_dkdv_inner(dk, dv, k, v, q_base, do_base, lse_base, delta_base,
                                 stride_qt, stride_qd, stride_dot, stride_dod,
                                 offs_n, offs_d, lo, tl.minimum(mid, T), T, diag, qk_scale, BLOCK_M, True)
    else:
        mid = 0
    dk, dv = _bwd_dkdv_inner(dk, dv, k, v, q_base, do_base, lse_base, delta_base,
                             stride_qt, stride_qd, stride_dot, stride_dod,
                             offs_n, offs_d, mid, T, T, diag, qk_scale, BLOCK_M, False)
    # step 4: store (keys past S were zeros and are dropped here)
    tl.store(DK + b * stride_dkb + h * stride_dkh + offs_n[:, None] * stride_dkn + offs_d[None, :] * stride_dkd,
             (dk * sm_scale).to(DK.dtype.element_ty), mask=key_ok[:, None])
    tl.store(DV + b * stride_dvb + h * stride_dvh + offs_n[:, None] * stride_dvn + offs_d[None, :] * stride_dvd,
             dv.to(DV.dtype.element_ty), mask=key_ok[:, None])


# ----------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------

def _check_head_dim(D):
    # <= 128: the block configs are checked for shared memory and spills up to 128 (tests/test_aot.py)
    assert 16 <= D <= 128 and D & (D - 1) == 0, f"the Triton kernels need a power-of-two head dim in [16, 128], got {D}"


def _len_bucket(n):
    return triton.next_power_of_2(max(n, 16))  # autotune key: retune per power of two, not per length


def _flash_fwd(q, k, v, causal, sm_scale):
    B, Hq, T, D = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    # O is laid out (B, T, Hq, D) in memory: the caller's o.transpose(1, 2).reshape(B, T, C) is free
    o = torch.empty(B, T, Hq, D, device=q.device, dtype=q.dtype).transpose(1, 2)  # (B, Hq, T, D) view
    lse = torch.empty(B, Hq, T, device=q.device, dtype=torch.float32)  # base-2 log-sum-exp per row
    grid = lambda meta: (triton.cdiv(T, meta["BLOCK_M"]), B * Hq)  # noqa: E731
    _attn_fwd[grid](q, k, v, o, lse, *q.stride(), *k.stride(), *v.stride(), *o.stride(),
                    Hq, T, S, sm_scale * LOG2E, _len_bucket(max(T, S)),
                    GROUP=Hq // Hkv, HEAD_DIM=D, CAUSAL=causal)
    return o, lse


def _flash_bwd(do, q, k, v, o, lse, causal, sm_scale):
    B, Hq, T, D = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    G = Hq // Hkv
    # delta_i = sum_d dO_id O_id: a cheap, bandwidth-bound row reduction, left to torch
    delta = (do.float() * o.float()).sum(-1).contiguous()  # (B, Hq, T) fp32
    dq = torch.empty_like(q)
    if G == 1:
        dk, dv = torch.empty_like(k), torch.empty_like(v)
    else:  # per-query-head fp32 partials, summed over each group below (see the module docstring)
        dk = torch.empty(B, Hq, S, D, device=k.device, dtype=torch.float32)
        dv = torch.empty(B, Hq, S, D, device=k.device, dtype=torch.float32)
    bucket = _len_bucket(max(T, S))
    common = dict(GROUP=G, HEAD_DIM=D, CAUSAL=causal)
    grid_dq = lambda meta: (triton.cdiv(T, meta["BLOCK_M"]), B * Hq)  # noqa: E731
    _attn_bwd_dq[grid_dq](q, k, v, do, dq, lse, delta, *q.stride(), *k.stride(), *v.stride(), *do.stride(),
                          *dq.stride(), Hq, T, S, sm_scale * LOG2E, sm_scale, bucket, **common)
    grid_kv = lambda meta: (triton.cdiv(S, meta["BLOCK_N"]), B * Hq)  # noqa: E731
    _attn_bwd_dkdv[grid_kv](q, k, v, do, dk, dv, lse, delta, *q.stride(), *k.stride(), *v.stride(), *do.stride(),
                            *dk.stride(), *dv.stride(), Hq, T, S, sm_scale * LOG2E, sm_scale, bucket, **common)
    if G > 1:
        dk = dk.view(B, Hkv, G, S, D).sum(2).to(k.dtype)  # (B, Hkv, S, D)
        dv = dv.view(B, Hkv, G, S, D).sum(2).to(v.dtype)
    return dq, dk, dv


# ----------------------------------------------------------------------------------------------
# Autograd Function and public entry points
# ----------------------------------------------------------------------------------------------

class _FlashAttention(torch.autograd.Function):

    @staticmethod
    def forward(ctx, q, k, v, causal, sm_scale):
        o, lse = _flash_fwd(q, k, v, causal, sm_scale)
        ctx.save_for_backward(q, k, v, o, lse)  # lse is (B, Hq, T) fp32: the only extra activation
        ctx.causal, ctx.sm_scale = causal, sm_scale
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse = ctx.saved_tensors
        dq, dk, dv = _flash_bwd(do, q, k, v, o, lse, ctx.causal, ctx.sm_scale)
        return dq, dk, dv, None, None


def attention_triton(q, k, v, causal=True, sm_scale=None):
    """Same contract as attention_reference, on Triton kernels (GPU, or CPU under TRITON_INTERPRET=1).

    Inputs may be strided views (e.g. (B, T, H, D).transpose(1, 2)); nothing is copied.
    """
    _check(q, k, v)
    _check_head_dim(q.shape[3])
    assert not causal or q.shape[2] <= k.shape[2], "causal attention needs T <= S (bottom-right aligned)"
    sm_scale = q.shape[3] ** -0.5 if sm_scale is None else sm_scale
    return _FlashAttention.apply(q, k, v, causal, sm_scale)


def attention(q, k, v, causal=True, sm_scale=None):
    """Training/prefill attention: attention_triton for CUDA tensors, attention_reference otherwise
    (AUTOCOA_KERNELS overrides; see kernels/__init__.py)."""
    if use_triton(q):
        return attention_triton(q, k, v, causal=causal, sm_scale=sm_scale)
    return attention_reference(q, k, v, causal=causal, sm_scale=sm_scale)


# ----------------------------------------------------------------------------------------------
# Benchmark: python -m kernels.attention
# ----------------------------------------------------------------------------------------------

def _rel_err(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def _sdpa_expanded(q, k, v, causal):
    """The baseline: torch SDPA (cuDNN/FA2 backends on an H100) with the kv heads expanded to Hq."""
    G = q.shape[1] // k.shape[1]
    return F.scaled_dot_product_attention(q, k.repeat_interleave(G, 1), v.repeat_interleave(G, 1), is_causal=causal)


def _time_ms(fn, warmup=3, reps=10, flush_l2=False):
    """Median CUDA-event time of fn() in ms; the warm-up also runs the autotuner and compiles.
    flush_l2: overwrite a buffer twice the L2's size before each timed call (outside the timing), so a
    memory-bound kernel reads from HBM as in a real decode step, not from a warm L2."""
    flush = None
    if flush_l2:
        flush = torch.empty(2 * torch.cuda.get_device_properties(0).L2_cache_size, dtype=torch.uint8, device="cuda")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        if flush is not None:
            flush.zero_()
        t0, t1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        t0.record()
        fn()
        t1.record()
        torch.cuda.synchronize()  # elapsed_time needs both events done
        times.append(t0.elapsed_time(t1))
    return statistics.median(times)


def copy_bandwidth_gbs(n_bytes=2**30):
    """Device-to-device copy bandwidth in GB/s, counting bytes read plus written: the practical HBM
    ceiling that the memory-bound kernels are measured against."""
    x = torch.empty(n_bytes, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    ms = _time_ms(lambda: y.copy_(x), reps=20)
    return 2 * n_bytes / ms / 1e6


def bench():
    """Prefill table: causal attention forward and forward+backward, ours vs torch SDPA, bf16."""
    Hq, Hkv, D = 28, 4, 128  # R1-Distill-Qwen-7B
    print(f"== attention (training/prefill): {torch.cuda.get_device_name()}, bf16, Hq/Hkv = {Hq}/{Hkv}, D = {D}, "
          f"triton {triton.__version__}")
    _check_bf16(Hq, Hkv, D)
    print("speedup = SDPA time / our time (> 1: ours is faster); SDPA gets the kv heads expanded (outside timing);"
          " f+b FLOPs = 3.5x forward")
    print(f"{'T':>6} {'B':>3} | {'fwd ms':>8} {'sdpa':>8} {'TFLOP/s':>8} {'sdpa':>7} {'speedup':>7} |"
          f" {'f+b ms':>8} {'sdpa':>8} {'TFLOP/s':>8} {'sdpa':>7} {'speedup':>7}")
    for T in (1024, 4096, 16384):
        _bench_prefill(max(1, 16384 // T), T, Hq, Hkv, D)


def _check_bf16(Hq, Hkv, D):
    """Correctness in bf16 against SDPA, which the CPU interpreter cannot check."""
    dev, dt = torch.device("cuda"), torch.bfloat16
    torch.manual_seed(0)
    B, T = 2, 1000
    q, k, v = (torch.randn(B, h, T, D, device=dev, dtype=dt) for h in (Hq, Hkv, Hkv))
    do = torch.randn(B, Hq, T, D, device=dev, dtype=dt)
    results = {}
    for name, fn, dtype in (("ours", attention_triton, dt), ("sdpa", _sdpa_expanded, dt),
                            ("fp32", _sdpa_expanded, torch.float32)):
        leaves = [x.detach().to(dtype).requires_grad_() for x in (q, k, v)]
        o = fn(*leaves, causal=True)
        results[name] = (o, *torch.autograd.grad(o, leaves, do.to(dtype)))
    errs = [_rel_err(a, b) for a, b in zip(results["ours"], results["sdpa"])]
    print("bf16 rel err vs SDPA (o, dq, dk, dv): " + ", ".join(f"{e:.1e}" for e in errs),
          "OK" if max(errs) <= 1e-2 else "FAIL")
    for name in ("ours", "sdpa"):  # context: how far each bf16 result is from fp32 math
        errs = [_rel_err(a, b) for a, b in zip(results[name], results["fp32"])]
        print(f"  {name} vs fp32 SDPA (o, dq, dk, dv): " + ", ".join(f"{e:.1e}" for e in errs))


def _bench_prefill(B, T, Hq, Hkv, D):
    """One row of the prefill table (a function so its tensors are freed before the next size)."""
    dev, dt = torch.device("cuda"), torch.bfloat16
    q, k, v = (torch.randn(B, h, T, D, device=dev, dtype=dt, requires_grad=True) for h in (Hq, Hkv, Hkv))
    do = torch.randn(B, Hq, T, D, device=dev, dtype=dt)
    kx, vx = (x.detach().repeat_interleave(Hq // Hkv, 1).requires_grad_() for x in (k, v))  # outside timing
    fwd = _time_ms(lambda: attention_triton(q, k, v))
    fwd_ref = _time_ms(lambda: F.scaled_dot_product_attention(q, kx, vx, is_causal=True))
    fb = _time_ms(lambda: torch.autograd.grad(attention_triton(q, k, v), (q, k, v), do))
    fb_ref = _time_ms(lambda: torch.autograd.grad(
        F.scaled_dot_product_attention(q, kx, vx, is_causal=True), (q, kx, vx), do))
    flops = 4 * B * Hq * T * T * D / 2  # causal: half the matrix; backward = 2.5x forward
    tf = lambda ms, mult: mult * flops / ms / 1e9  # noqa: E731  (ms -> TFLOP/s)
    print(f"{T:>6} {B:>3} | {fwd:8.3f} {fwd_ref:8.3f} {tf(fwd, 1):8.0f} {tf(fwd_ref, 1):7.0f} "
          f"{fwd_ref / fwd:6.2f}x | {fb:8.3f} {fb_ref:8.3f} {tf(fb, 3.5):8.0f} {tf(fb_ref, 3.5):7.0f} "
          f"{fb_ref / fb:6.2f}x")


def _sanity_cpu():
    print("no CUDA device: running a tiny comparison on the Triton CPU interpreter instead of the benchmark")
    torch.manual_seed(0)
    B, Hq, Hkv, T, S, D = 1, 4, 2, 37, 53, 32
    q = torch.randn(B, Hq, T, D, requires_grad=True)
    k, v = (torch.randn(B, Hkv, S, D, requires_grad=True) for _ in range(2))
    do = torch.randn(B, Hq, T, D)
    ours = attention_triton(q, k, v, causal=True)
    ref = attention_reference(q, k, v, causal=True)
    g_ours = torch.autograd.grad(ours, (q, k, v), do)
    g_ref = torch.autograd.grad(ref, (q, k, v), do)
    errs = [_rel_err(ours, ref)] + [_rel_err(a, b) for a, b in zip(g_ours, g_ref)]
    print("fp32 rel err vs reference (o, dq, dk, dv): " + ", ".join(f"{e:.1e}" for e in errs))
    ok = max(errs) < 1e-4
    print("OK" if ok else "FAIL")
    return ok


def main(module, bench, sanity_cpu):
    """`python -m kernels.<module>`: the benchmark on a GPU; without one, sanity_cpu() on the Triton
    interpreter (exit status 1 when it fails). kernels/decode.py shares this."""
    if torch.cuda.is_available():
        bench()
    elif not _INTERPRET:
        # Triton reads TRITON_INTERPRET when it is imported (kernels/__init__ already did), so re-run
        # the module in a fresh process with the interpreter switched on.
        env = {**os.environ, "TRITON_INTERPRET": "1"}
        os.execve(sys.executable, [sys.executable, "-m", module], env)
    else:
        sys.exit(0 if sanity_cpu() else 1)


if __name__ == "__main__":
    main("kernels.attention", bench, _sanity_cpu)
