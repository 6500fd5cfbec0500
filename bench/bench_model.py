"""Forward-pass speed: our Qwen2 vs transformers' eager Qwen2ForCausalLM, same weights, side by side.

    python bench/bench_model.py                    # ~0.5B shape (Qwen2.5-0.5B), batch 1 x 512 tokens
    python bench/bench_model.py --layers 4 --seq 128   # quicker

Random weights (nothing is downloaded). fp32 on CPU, bf16 on CUDA. Prints the median time of each and
the ratio transformers / ours (> 1 means we are faster). transformers runs in a process of its own
(tests/hf_oracle.py: in this repository `import kernels` finds our kernels/, not the package transformers
imports), which builds and saves the model and times its forward there, with this process's thread count;
ours then loads the same weights and is timed here. Neither time includes a process start or an import.
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]
import hf_oracle  # noqa: E402
from model import Qwen2  # noqa: E402


def timeit(fn, reps, sync):
    fn()  # warm-up
    times = []
    for _ in range(reps):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=24, help="decoder layers (Qwen2.5-0.5B has 24)")
    ap.add_argument("--seq", type=int, default=512, help="tokens per sequence")
    ap.add_argument("--batch", type=int, default=1, help="sequences per batch")
    ap.add_argument("--reps", type=int, default=5, help="timed repetitions (median reported)")
    a = ap.parse_args()
    if not hf_oracle.available():
        sys.exit("bench_model.py compares with transformers: pip install -r requirements-dev.txt")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    config = dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=a.layers,
                  num_attention_heads=14, num_key_value_heads=2, rope_theta=1e6, tie_word_embeddings=True)
    x = torch.randint(0, config["vocab_size"], (a.batch, a.seq))
    with tempfile.TemporaryDirectory() as d:  # transformers' side first, in its own process; then ours alone
        _, ref = hf_oracle.batch([dict(task="build", config=config, out=d),
                                  dict(task="time_forward", path=d, ids=x.tolist(), device=device,
                                       dtype=str(dtype).removeprefix("torch."), reps=a.reps)],
                                 threads=torch.get_num_threads())
        ours = Qwen2.from_pretrained(d, device=device, dtype=dtype).eval()
    x = x.to(device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    with torch.no_grad():
        diff = (ours(x).float() - ref["logits"].to(device).float()).abs().max().item()
        t_ours = timeit(lambda: ours(x), a.reps, sync)
    t_ref = ref["seconds"]
    n = sum(p.numel() for p in ours.parameters())
    name = torch.cuda.get_device_name() if device == "cuda" else f"CPU x{torch.get_num_threads()} threads"
    print(f"device: {name}  dtype: {dtype}  params: {n / 1e6:.0f}M  batch {a.batch} x {a.seq} tokens")
    print(f"max |logit diff| vs transformers: {diff:.2e}")
    print(f"ours:          {t_ours * 1e3:9.1f} ms")
    print(f"transformers:  {t_ref * 1e3:9.1f} ms  (eager)")
    print(f"ratio transformers/ours: {t_ref / t_ours:.2f}x")


if __name__ == "__main__":
    main()
