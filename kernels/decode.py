"""Attention of a few new tokens against a KV cache with per-row lengths (flash-decoding).

  decode_attention_triton(q, k_cache, v_cache, start)
      q (B, Hq, T, D); k_cache/v_cache (B, Hkv, S_max, D) already holding the new keys at
      start[b] .. start[b]+T-1; start (B,) int. Query i of row b sees keys j <= start[b] + i.
      The key axis is split into chunks handled by separate programs (so batch 1 with a 32k cache
      still fills the GPU), each writing a partial output plus its log-sum-exp; a small second
      kernel merges the chunks. The PyTorch reference, decode_attention_reference, is also the CPU
      fallback (decode_attention picks one by the tensors' device, kernels/__init__.py).

Conventions (the same as kernels/attention.py, whose _check / _check_head_dim this file shares):
  - Grouped-query attention: query head h reads kv head h // (Hq // Hkv) straight from the cache.
    One program serves every (query head of the group, new token) pair, so each chunk of cache is
    read once for all of them.
  - Softmax in fp32 (exp2 domain); inputs fp16/bf16/fp32; output in the input dtype; default scale
    D ** -0.5.

Simplified on purpose (vs FlashDecoding / FlashInfer):
  - Forward only (inference); D must be a power of two >= 16.
  - The key axis is split by the cache capacity S_max, not each row's length (that would need a
    host sync); rows shorter than a chunk's start exit at once. Pass a cache view trimmed to the
    longest row for best speed.
  - At most 64 chunks (the combine kernel holds them all in one tile); block sizes picked by dtype
    and row count (_decode_config), no autotuning; no paged cache, no FP8 cache.

Run:
  python -m kernels.decode                      # CUDA: bf16 check + benchmark vs SDPA; CPU: tiny sanity run
  python -m pytest -q tests/test_decode.py      # CPU, kernels under TRITON_INTERPRET=1
"""
import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from kernels import use_triton
from kernels.attention import (LOG2E, _INTERPRET, _check, _check_head_dim, _rel_err, _time_ms, copy_bandwidth_gbs,
                               main)


# ----------------------------------------------------------------------------------------------
# PyTorch reference (also the CPU fallback)
# ----------------------------------------------------------------------------------------------

def decode_attention_reference(q, k_cache, v_cache, start, sm_scale=None):
    """Attention of T new tokens per row over a KV cache whose rows have different lengths.

    q (B, Hq, T, D); k_cache/v_cache (B, Hkv, S_max, D) already holding the new keys at
    start[b] .. start[b]+T-1; start (B,) int. Query i of row b sees keys j <= start[b] + i.
    Slots past a row's last new key are masked out but must hold finite values (model.KVCache
    zero-initialises its buffers): a nan there would survive the mask as nan * 0 inside SDPA's
    matmuls. Guarding against that with a torch.where copied the whole cache in every layer at every
    decode step, most of the CPU decode time; the Triton kernel masks its loads and needs no such rule.
    Bytes moved: the cache up to the longest row (K and V) read once, plus q and o; the mask is tiny.
    """
    _check(q, k_cache, v_cache)
    B, Hq, T, D = q.shape
    S = min(k_cache.shape[2], int(start.max()) + T)  # only read up to the longest row (.max() syncs on a GPU)
    start = start.to(q.device)
    pos = torch.arange(S, device=q.device)
    last = start.view(B, 1, 1) + torch.arange(T, device=q.device).view(1, T, 1)  # (B, T, 1)
    mask = pos.view(1, 1, S) <= last  # (B, T, S): query i of row b sees keys j <= start[b] + i
    dt = torch.promote_types(q.dtype, torch.float32)
    out = F.scaled_dot_product_attention(
        q.to(dt), k_cache[:, :, :S].to(dt), v_cache[:, :, :S].to(dt), attn_mask=mask[:, None], scale=sm_scale,
        enable_gqa=Hq != k_cache.shape[1])  # mask (B, 1, T, S) broadcasts over heads
    return out.to(q.dtype)


# ----------------------------------------------------------------------------------------------
# Triton kernels: decoding against a KV cache (flash-decoding)
# ----------------------------------------------------------------------------------------------

@triton.jit
def _decode_split(Q, K, V, START, O_PART, LSE_PART,
                  stride_qb, stride_qh, stride_qt, stride_qd, stride_kb, stride_kh, stride_kn, stride_kd,
                  stride_vb, stride_vh, stride_vn, stride_vd,
                  Hkv, T, S_MAX, CHUNK, SPLITS, qk_scale,
                  GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr):
    # step 1: program = (key chunk, block of rows, batch x kv head). Its rows are every
    # (query head of the group, new token) pair, head-major, so the chunk of cache is read once
    # for all GROUP * T queries that need it.
    split = tl.program_id(0)
    offs_r = tl.program_id(1) * BLOCK_R + tl.arange(0, BLOCK_R)
    bg = tl.program_id(2)
    b = (bg // Hkv).to(tl.int64)
    g = (bg % Hkv).to(tl.int64)
    row_ok = offs_r < GROUP * T
    h = g * GROUP + offs_r // T  # (BLOCK_R,) query head of each row
    t = offs_r % T  # (BLOCK_R,) new-token index of each row
    offs_d = tl.arange(0, HEAD_DIM)
    q = tl.load(Q + b * stride_qb + h[:, None] * stride_qh + t[:, None] * stride_qt + offs_d[None, :] * stride_qd,
                mask=row_ok[:, None], other=0.0)  # (BLOCK_R, D)
    # step 2: this chunk's key range, cut at the row's last new key and at the cache end
    start = tl.load(START + b).to(tl.int32)  # int32 like lo, so the loop bounds share one type
    last = start + t  # (BLOCK_R,) row r sees keys j <= last
    lo = split * CHUNK
    hi = tl.minimum(tl.minimum(lo + CHUNK, start + T), S_MAX)
    k_base = K + b * stride_kb + g * stride_kh
    v_base = V + b * stride_vb + g * stride_vh
    acc = tl.zeros([BLOCK_R, HEAD_DIM], dtype=tl.float32)
    l_i = tl.zeros([BLOCK_R], dtype=tl.float32)
    m_i = tl.full([BLOCK_R], float("-inf"), dtype=tl.float32)
    for start_n in range(lo, hi, BLOCK_N):
        # step 3: one block of cached keys/values (never past hi, so never past S_MAX)
        offs_n = start_n + tl.arange(0, BLOCK_N)
        in_range = offs_n < hi
        kT = tl.load(k_base + offs_n[None, :] * stride_kn + offs_d[:, None] * stride_kd,
                     mask=in_range[None, :], other=0.0)  # (D, BLOCK_N)
        v = tl.load(v_base + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd,
                    mask=in_range[:, None], other=0.0)  # (BLOCK_N, D)
        s = tl.dot(q, kT) * qk_scale  # (BLOCK_R, BLOCK_N)
        s = tl.where(in_range[None, :] & (offs_n[None, :] <= last[:, None]), s, float("-inf"))
        # step 4: online softmax. Unlike training, a row may see nothing yet in this chunk (its
        # last key precedes the chunk), so guard the max against -inf - -inf = nan.
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp2(s - m_safe[:, None])
        alpha = tl.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new
    # step 5: partial result + its log-sum-exp; a chunk a row cannot see gets (0, -inf) = weight 0
    seen = l_i > 0
    o = acc / tl.where(seen, l_i, 1.0)[:, None]
    lse = tl.where(seen, m_i + tl.log2(tl.where(seen, l_i, 1.0)), float("-inf"))
    row = (b * Hkv * GROUP + h) * T + t  # (BLOCK_R,) index into (B, Hq, T)
    tl.store(O_PART + (row[:, None] * SPLITS + split) * HEAD_DIM + offs_d[None, :], o, mask=row_ok[:, None])
    tl.store(LSE_PART + row * SPLITS + split, lse, mask=row_ok)


@triton.jit
def _decode_combine(O_PART, LSE_PART, OUT, stride_ob, stride_oh, stride_ot, stride_od, H, T, SPLITS,
                    HEAD_DIM: tl.constexpr, BLOCK_S: tl.constexpr):
    # step 1: one program per output row (b, h, t); gather its partials from every chunk
    row = tl.program_id(0).to(tl.int64)
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, HEAD_DIM)
    split_ok = offs_s < SPLITS
    lse = tl.load(LSE_PART + row * SPLITS + offs_s, mask=split_ok, other=float("-inf"))  # (BLOCK_S,)
    o = tl.load(O_PART + (row * SPLITS + offs_s[:, None]) * HEAD_DIM + offs_d[None, :],
                mask=split_ok[:, None], other=0.0)  # (BLOCK_S, D)
    # step 2: softmax-weighted sum of the partial outputs: w_c = exp2(lse_c - max lse). Chunk 0
    # always holds key 0, which every row sees, so the max is finite.
    w = tl.exp2(lse - tl.max(lse, 0))
    out = tl.sum(o * w[:, None], 0) / tl.sum(w, 0)  # (D,)
    b, h, t = row // (H * T), row // T % H, row % T
    tl.store(OUT + b * stride_ob + h * stride_oh + t * stride_ot + offs_d * stride_od, out.to(OUT.dtype.element_ty))


# ----------------------------------------------------------------------------------------------
# Launcher
# ----------------------------------------------------------------------------------------------

def _num_sms(device):
    if device.type != "cuda":
        return 4  # interpreter: pretend a tiny GPU, so small test caches still get several chunks
    return torch.cuda.get_device_properties(device).multi_processor_count


def _decode_config(element_size, rows):
    """(BLOCK_R, BLOCK_N, num_warps, num_stages) for `rows` = group x new tokens of one kv head.

    Rows per program: all of them up to 128 (tl.dot needs >= 16). fp32 inputs double every tile,
    so they get 32-key blocks and 2 stages (64 keys and 3 stages would need more than sm_90's
    shared memory at head_dim 128); 8 warps from 64 rows on, or the accumulators spill. Every
    choice fits sm_90 and sm_80 without spills at every head dim up to 128 (checked by
    tests/test_aot.py). Interpreter: 16-key blocks, so small test caches span many blocks.
    """
    block_r = max(16, min(128, triton.next_power_of_2(rows)))
    warps = 4 if block_r <= 32 else 8
    if _INTERPRET:
        return block_r, 16, warps, 1
    return (block_r, 64, warps, 3) if element_size <= 2 else (block_r, 32, warps, 2)


def _decode(q, k_cache, v_cache, start, sm_scale):
    B, Hq, T, D = q.shape
    Hkv, S_max = k_cache.shape[1], k_cache.shape[2]
    G = Hq // Hkv
    block_r, block_n, warps, stages = _decode_config(q.element_size(), G * T)
    row_blocks = triton.cdiv(G * T, block_r)  # > 1 only for long T (prefill through the cache)
    # Chunk the key axis so that about 2 programs per SM are busy; cap the chunks at 64 so the
    # combine kernel holds them all in one tile.
    splits = triton.cdiv(2 * _num_sms(q.device), B * Hkv * row_blocks)
    splits = max(1, min(64, splits, triton.cdiv(S_max, block_n)))
    chunk = triton.cdiv(triton.cdiv(S_max, splits), block_n) * block_n  # a whole number of key blocks
    splits = triton.cdiv(S_max, chunk)
    o_part = torch.empty(B, Hq, T, splits, D, device=q.device, dtype=torch.float32)
    lse_part = torch.empty(B, Hq, T, splits, device=q.device, dtype=torch.float32)
    _decode_split[(splits, row_blocks, B * Hkv)](
        q, k_cache, v_cache, start, o_part, lse_part, *q.stride(), *k_cache.stride(), *v_cache.stride(),
        Hkv, T, S_max, chunk, splits, sm_scale * LOG2E,
        GROUP=G, HEAD_DIM=D, BLOCK_R=block_r, BLOCK_N=block_n, num_warps=warps, num_stages=stages)
    out = torch.empty_like(q)
    _decode_combine[(B * Hq * T,)](o_part, lse_part, out, *out.stride(), Hq, T, splits,
                                   HEAD_DIM=D, BLOCK_S=triton.next_power_of_2(splits))
    return out


# ----------------------------------------------------------------------------------------------
# Public entry points (forward only: no autograd Function)
# ----------------------------------------------------------------------------------------------

def decode_attention_triton(q, k_cache, v_cache, start, sm_scale=None):
    """Same contract as decode_attention_reference, on Triton kernels; forward only (inference)."""
    _check(q, k_cache, v_cache)
    _check_head_dim(q.shape[3])
    assert start.shape == (q.shape[0],) and not start.is_floating_point(), "start must be (B,) integers"
    sm_scale = q.shape[3] ** -0.5 if sm_scale is None else sm_scale
    return _decode(q, k_cache, v_cache, start.to(q.device), sm_scale)


def decode_attention(q, k_cache, v_cache, start, sm_scale=None):
    """Decode attention over a KV cache: decode_attention_triton for CUDA tensors,
    decode_attention_reference otherwise (AUTOCOA_KERNELS overrides; see kernels/__init__.py)."""
    if use_triton(q):
        return decode_attention_triton(q, k_cache, v_cache, start, sm_scale=sm_scale)
    return decode_attention_reference(q, k_cache, v_cache, start, sm_scale=sm_scale)


# ----------------------------------------------------------------------------------------------
# Benchmark: python -m kernels.decode
# ----------------------------------------------------------------------------------------------

def bench(copy_gbs=None):
    """Decode table: one new token per row over a full cache, ours vs torch SDPA, bf16, L2 flushed.
    copy_gbs: the device-to-device copy bandwidth (measured here when not given)."""
    Hq, Hkv, D = 28, 4, 128  # R1-Distill-Qwen-7B
    copy_gbs = copy_gbs or copy_bandwidth_gbs()
    print(f"== decode attention: {torch.cuda.get_device_name()}, bf16, Hq/Hkv = {Hq}/{Hkv}, D = {D}, "
          f"triton {triton.__version__}; device copy {copy_gbs:.0f} GB/s (read + written)")
    _check_bf16(Hq, Hkv, D)
    print("L2 flushed before every call; GB/s = K+V cache bytes / our time, 'of copy' = that / copy bandwidth; "
          "speedup = SDPA time / our time; SDPA gets the cache expanded to Hq heads (outside timing)")
    print(f"{'batch':>5} {'cache':>6} | {'ours ms':>8} {'sdpa ms':>8} {'GB/s':>6} {'of copy':>7} {'speedup':>7}")
    for B in (1, 64):
        for L in (1024, 4096, 16384, 32768):
            _bench_decode(B, L, Hq, Hkv, D, copy_gbs)


def _check_bf16(Hq, Hkv, D):
    """Correctness in bf16 against the reference, which the CPU interpreter cannot check."""
    dev, dt = torch.device("cuda"), torch.bfloat16
    torch.manual_seed(0)
    B, S_max = 2, 3000
    kc, vc = (torch.randn(B, Hkv, S_max, D, device=dev, dtype=dt) for _ in range(2))
    start = torch.tensor([5, 2500], device=dev)
    for T_new in (1, 3):
        qd = torch.randn(B, Hq, T_new, D, device=dev, dtype=dt)
        err = _rel_err(decode_attention_triton(qd, kc, vc, start), decode_attention_reference(qd, kc, vc, start))
        print(f"bf16 decode T={T_new} rel err vs reference: {err:.1e}", "OK" if err <= 1e-2 else "FAIL")


def _bench_decode(B, L, Hq, Hkv, D, copy_gbs):
    """One row of the decode table: B rows, each with L cached keys, one new token."""
    dev, dt = torch.device("cuda"), torch.bfloat16
    kc, vc = (torch.randn(B, Hkv, L, D, device=dev, dtype=dt) for _ in range(2))
    qd = torch.randn(B, Hq, 1, D, device=dev, dtype=dt)
    start = torch.full((B,), L - 1, device=dev)
    kx, vx = (x.repeat_interleave(Hq // Hkv, 1) for x in (kc, vc))  # outside timing
    ours = _time_ms(lambda: decode_attention_triton(qd, kc, vc, start), reps=20, flush_l2=True)
    ref = _time_ms(lambda: F.scaled_dot_product_attention(qd, kx, vx), reps=20, flush_l2=True)
    gbs = 2 * kc.numel() * kc.element_size() / ours / 1e6  # K and V, bytes / ms -> GB/s
    print(f"{B:>5} {L:>6} | {ours:8.3f} {ref:8.3f} {gbs:6.0f} {gbs / copy_gbs:7.0%} {ref / ours:6.2f}x")


def _sanity_cpu():
    print("no CUDA device: running a tiny comparison on the Triton CPU interpreter instead of the benchmark")
    torch.manual_seed(0)
    B, Hq, Hkv, S, D = 1, 4, 2, 53, 32
    k, v = (torch.randn(B, Hkv, S, D) for _ in range(2))
    start = torch.tensor([S - 3])  # the last 3 keys are the new tokens
    qd = torch.randn(B, Hq, 3, D)
    err = _rel_err(decode_attention_triton(qd, k, v, start), decode_attention_reference(qd, k, v, start))
    print(f"decode rel err vs reference: {err:.1e}")
    ok = err < 1e-4
    print("OK" if ok else "FAIL")
    return ok


if __name__ == "__main__":
    main("kernels.decode", bench, _sanity_cpu)
