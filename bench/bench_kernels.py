"""Every kernel benchmark side by side, in one run, with one ratio convention: speedup = their time / our
time (> 1: ours is faster).

  1. device-to-device copy bandwidth (bytes read + written): the ceiling for the memory-bound rows;
  2. attention forward and forward+backward vs torch SDPA (TFLOP/s, speedup)   kernels/attention.py;
  3. decode attention vs SDPA with L2 flushed (GB/s, fraction of the copy bandwidth)   kernels/decode.py;
  4. masked log-probs vs F.cross_entropy on full logits and vs the chunked torch reference
     (ms, peak GiB)   kernels/logprobs.py;
  5. single-stream greedy decode of the R1-Distill-Qwen-1.5B shape (random weights, model.py with a KV
     cache, batch 1) as a fraction of the HBM floor: tokens/s <= copy bandwidth / weight bytes.

Each kernel file's own benchmark (python -m kernels.attention, ...) prints the same table alone.
Run (CUDA only; on a CPU it says so and exits):
  python bench/bench_kernels.py                  # everything
  python bench/bench_kernels.py --only decode    # one section: attention, decode, logprobs, model
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import kernels.attention as attention_mod  # noqa: E402
import kernels.decode as decode_mod  # noqa: E402
import kernels.logprobs as logprobs_mod  # noqa: E402


@torch.no_grad()
def bench_model_decode(copy_gbs, new_tokens=128, prompt_len=128):
    """Batch-1 greedy decode with the KV cache: every step reads every weight once (the embedding
    only one row), so weight bytes / copy bandwidth is the floor on the time per token."""
    try:
        from model import KVCache, Qwen2, Qwen2Config
    except ImportError as e:  # model.py needs safetensors, which a bare GPU machine may lack
        print(f"== model decode: skipped, model.py cannot be imported ({e})")
        return
    cfg = Qwen2Config(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                      num_attention_heads=12, num_key_value_heads=2)
    with torch.device("cuda"):
        model = Qwen2(cfg).to(torch.bfloat16).eval()  # torch's default init: random weights are enough
    weight_bytes = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if "embed" not in n)
    prompt = torch.randint(0, cfg.vocab_size, (1, prompt_len), device="cuda")

    def run(n):
        cache = KVCache(cfg, 1, prompt_len + n + 1, device="cuda", dtype=torch.bfloat16)
        tok = model(prompt, cache=cache)[:, -1:].argmax(-1)  # prefill, then one token per step
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(n):
            tok = model(tok, cache=cache)[:, -1:].argmax(-1)  # (1, 1)
        torch.cuda.synchronize()
        return time.perf_counter() - t

    run(8)  # warm-up: Triton compiles, cuBLAS heuristics
    tps = new_tokens / run(new_tokens)
    floor = copy_gbs * 1e9 / weight_bytes
    print(f"== model decode: 1.5B shape, bf16, batch 1, {prompt_len}-token prompt, {new_tokens} new tokens "
          f"(eager, no CUDA graphs)")
    print(f"{tps:.1f} tok/s; HBM floor {floor:.0f} tok/s ({weight_bytes / 1e9:.2f} GB of weights at "
          f"{copy_gbs:.0f} GB/s): {tps / floor:.1%} of it")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["attention", "decode", "logprobs", "model"], help="run one section")
    a = ap.parse_args()
    if not torch.cuda.is_available():
        print("bench_kernels.py needs CUDA: no GPU here. On a CPU, `python -m kernels.attention` (and decode, "
              "logprobs) run a small interpreter check instead.")
        return
    copy_gbs = attention_mod.copy_bandwidth_gbs()
    print(f"{torch.cuda.get_device_name()}: device-to-device copy {copy_gbs:.0f} GB/s (read + written); "
          f"torch {torch.__version__}")
    sections = {"attention": attention_mod.bench, "decode": lambda: decode_mod.bench(copy_gbs),
                "logprobs": lambda: logprobs_mod.bench(copy_gbs), "model": lambda: bench_model_decode(copy_gbs)}
    for name, fn in sections.items():
        if a.only in (None, name):
            print()
            t = time.perf_counter()
            fn()
            torch.cuda.empty_cache()
            print(f"({name}: {time.perf_counter() - t:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
