"""Multi-turn rollout speed: our kept KV cache vs re-prefilling after every observation (what Search-R1,
verl and TRL do) vs transformers' generate re-run on the full sequence after every observation.

    python bench/bench_sampler.py                       # small random model: batch 1 and 64, 4 actions each
    python bench/bench_sampler.py --batches 8 --no-hf   # quicker
    python bench/bench_sampler.py --hidden 896 --layers 24 --heads 14 --inter 4864 --vocab 151936  # 0.5B shape
    python bench/bench_sampler.py --skip-1p5b           # on CUDA: only the multi-turn comparison

All three run side by side on the same random-weight model, greedy, fp32 on CPU / bf16 on CUDA. Random
weights never write tags, so a logits processor forces an action (" <begin_search> q </end_search>")
closing every --every generated tokens, and a fixed fake tool returns an observation of --obs-tokens
tokens: each rollout is (actions + 1) * every generated tokens plus actions * obs-tokens injected ones.
transformers generates the same number of tokens per segment (its text is random, not forced). It runs in a
process of its own (tests/hf_oracle.py: in this repository `import kernels` finds our kernels/, not the package
transformers imports), with this process's thread count, before ours; it times its rollouts there, so neither
side's time includes a process start or an import.
Ours runs once more with the rows acting at different steps (as in RL, where every sample acts when it
decides to): then a step takes in the actors' observations in a forward of their own rows.
On CPU torch gets one thread by default: these small matmuls gain little from more, and on a shared
machine spinning OpenMP threads make them many times slower (use --threads to change it).

On CUDA it also measures single-stream decode of an R1-Distill-Qwen-1.5B-shaped model (hidden 1536,
28 layers, vocab 151936) as a fraction of the memory-bandwidth floor: a decode step must read every
weight once, so tokens/s <= bandwidth / weight bytes; bandwidth is measured here with a big
device-to-device copy.
"""
import argparse
import os
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]
import hf_oracle  # noqa: E402
from tokenizers import AddedToken, decoders, models, pre_tokenizers  # noqa: E402
from tokenizers import Tokenizer as HFTokenizer  # noqa: E402

from env import TAGS, format_observation  # noqa: E402
from model import Qwen2, Qwen2Config  # noqa: E402
from sample import add_sampling_args, sample  # noqa: E402
from tokenizer import EOS, Tokenizer, bytes_to_unicode  # noqa: E402


def byte_tokenizer():
    """Every byte one token, eos and the tags added as single tokens (ids 256..). The model's vocab may be
    larger: ids past the tokenizer's decode to nothing, so they never form a tag."""
    b2u = bytes_to_unicode()
    tk = HFTokenizer(models.BPE(vocab={b2u[b]: b for b in range(256)}, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens([AddedToken(EOS, special=True, normalized=False)])
    tk.add_tokens([AddedToken(t, normalized=False) for t in
                   (TAGS.search_open, TAGS.search_close, TAGS.result_open, TAGS.result_close)])
    return Tokenizer(tk)


class ActEvery:
    """Logits processor: in each run of policy text, force the action's tokens so that it closes on the
    every-th token, for the first `actions` runs; eos and the tags are banned everywhere else.
    stagger=B shortens row i's first run by i/B of it, so that the rows of a batch act at different steps."""

    def __init__(self, tok, every, actions, stagger=0):
        self.action = tok.encode(f" {TAGS.search_open} q {TAGS.search_close}")
        assert every > len(self.action)
        self.every, self.actions, self.stagger = every, actions, stagger
        self.ban = [tok.eos_id] + [tok.token_id(t) for t in (TAGS.search_open, TAGS.search_close)]

    def __call__(self, logits, rollouts):
        logits[:, self.ban] = -float("inf")
        rows, toks = [], []
        for i, r in enumerate(rollouts):
            free = self.every - len(self.action)
            if self.stagger and r.n_actions == 0:
                free -= r.index * free // self.stagger
            k = trailing_ones(r.policy_mask) - free  # position in the action
            if r.n_actions < self.actions and 0 <= k < len(self.action):
                rows.append(i)
                toks.append(self.action[k])
        if rows:  # one scatter for every forced row
            rows, toks = torch.tensor(rows, device=logits.device), torch.tensor(toks, device=logits.device)
            logits[rows] = -float("inf")
            logits[rows, toks] = 0.0
        return logits


def trailing_ones(mask):
    """Length of the current run of policy text (tokens since the last injected one)."""
    try:
        return mask[::-1].index(0)
    except ValueError:
        return len(mask)


class FixedTool:
    def __init__(self, contents):
        self.contents, self.calls = contents, 0

    def search(self, queries, topk=3):
        self.calls += 1
        return [[{"contents": self.contents}] for _ in queries]


def fixed_observation(tok, n_tokens):
    """Document text whose observation is exactly n_tokens tokens with the byte tokenizer."""
    overhead = len(tok.encode(format_observation([{"contents": "w"}]))) - 1
    return "w" * (n_tokens - overhead)


def hf_rollouts(a, model, batches, obs_ids, device, dtype):
    """transformers' way, in its own process (tests/hf_oracle.py, task "rollouts"), on the same weights: generate a
    segment, append the observation, generate again from the full sequence (generate re-prefills all of it).
    Equal-length prompts, so no padding is needed. The best time of a.reps runs per batch (None without it)."""
    if not hf_oracle.available():
        print("transformers is not installed: its baseline is skipped")
        return [None] * len(batches)
    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(d)
        job = dict(task="rollouts", path=d, device=device, dtype=str(dtype).removeprefix("torch."), batches=batches,
                   obs_ids=obs_ids, segments=a.max_actions + 1, every=a.every, reps=a.reps)
        return hf_oracle.batch([job], threads=torch.get_num_threads())[0]


def timed(fn, sync, reps):
    """(output, best wall time of reps runs): the best is the least disturbed by other work on the machine."""
    best = float("inf")
    for _ in range(reps):
        sync()
        t = time.perf_counter()
        out = fn()
        sync()
        best = min(best, time.perf_counter() - t)
    return out, best


def multi_turn(a, device, dtype, sync):
    tok = byte_tokenizer()
    cfg = Qwen2Config(vocab_size=a.vocab, hidden_size=a.hidden, intermediate_size=a.inter,
                      num_hidden_layers=a.layers, num_attention_heads=a.heads, num_key_value_heads=a.kv_heads)
    model = Qwen2(cfg).init_weights(seed=0)
    n = sum(p.numel() for p in model.parameters())
    print(f"model: hidden {a.hidden}, {a.layers} layers, {a.heads}/{a.kv_heads} heads, vocab {a.vocab} "
          f"({n / 1e6:.1f}M params); prompt {a.prompt_len}, {a.max_actions} actions, an action every {a.every} "
          f"generated tokens, observations of {a.obs_tokens} tokens")
    tool = FixedTool(fixed_observation(tok, a.obs_tokens))
    obs_ids = tok.encode(format_observation([{"contents": tool.contents}]))
    assert len(obs_ids) == a.obs_tokens
    budget = (a.max_actions + 1) * a.every + a.max_actions * a.obs_tokens
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, 256, (B, a.prompt_len), generator=g).tolist() for B in a.batches]
    t_hf = [None] * len(batches) if a.no_hf else hf_rollouts(a, model, batches, obs_ids, device, dtype)
    model = model.to(device, dtype).eval()
    for B, prompts, t_hf_B in zip(a.batches, batches, t_hf):
        kw = dict(tool=tool, mode="real", temperature=a.temperature, top_p=a.top_p, max_new_tokens=budget,
                  max_actions=a.max_actions, logits_processor=ActEvery(tok, a.every, a.max_actions))
        sample(model, tok, prompts[:1], **dict(kw, max_new_tokens=a.every + 8))  # warm-up
        generated = B * (a.max_actions + 1) * a.every
        ours, t_ours = timed(lambda: sample(model, tok, prompts, **kw), sync, a.reps)
        peer, t_peer = timed(lambda: sample(model, tok, prompts, reprefill=True, **kw), sync, a.reps)
        assert all(len(r.completion) == budget and r.n_tool_calls == a.max_actions for r in ours)
        same = all(x.completion == y.completion for x, y in zip(ours, peer))
        print(f"\nbatch {B}: {generated} generated + {B * a.max_actions * a.obs_tokens} injected tokens "
              f"(kept == re-prefilled trajectories: {same})")
        report("ours, cache kept", generated, t_ours, ours.stats)
        report("re-prefill (peers)", generated, t_peer, peer.stats, f"ours is {t_peer / t_ours:.2f}x faster")
        kw["logits_processor"] = ActEvery(tok, a.every, a.max_actions, stagger=B)
        stag, t_stag = timed(lambda: sample(model, tok, prompts, **kw), sync, a.reps)
        assert all(len(r.completion) == budget and r.n_tool_calls == a.max_actions for r in stag)
        report("ours, rows act at different steps", generated, t_stag, stag.stats)
        if t_hf_B is not None:
            report("transformers generate", generated, t_hf_B, None, f"ours is {t_hf_B / t_ours:.2f}x faster")


def report(label, generated, seconds, stats, extra=""):
    line = f"  {label:<34} {generated / seconds:9.1f} tok/s {seconds:7.2f}s"
    if stats is not None:
        line += (f"  (prefill {stats.prefill_s:.2f}s extend {stats.extend_s:.2f}s decode {stats.decode_s:.2f}s;"
                 f" {stats.tokens_forwarded} tokens forwarded, {stats.tokens_computed} computed)")
    print(line + (f"  {extra}" if extra else ""))


def decode_floor(a, sync):
    """Single-stream decode of a 1.5B-shaped model vs weight bytes / measured bandwidth (CUDA only)."""
    x = torch.empty(2 * 2**30, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    for _ in range(3):
        y.copy_(x)
    sync()
    t = time.perf_counter()
    for _ in range(10):
        y.copy_(x)
    sync()
    bw = 2 * x.numel() * 10 / (time.perf_counter() - t)  # bytes read + written
    del x, y
    cfg = Qwen2Config(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                      num_attention_heads=12, num_key_value_heads=2)
    with torch.device("cuda"):
        model = Qwen2(cfg).to(torch.bfloat16).eval()  # torch's default init: random is all we need
    tok = byte_tokenizer()
    # a decode step reads every weight once, except the embedding (one row per token)
    weight_bytes = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if "embed" not in n)
    prompt = [list(range(1, 129))]
    sample(model, tok, prompt, mode="none", greedy=True, max_new_tokens=16, eos_id=-1)  # warm-up
    out = sample(model, tok, prompt, mode="none", greedy=True, max_new_tokens=a.decode_tokens, eos_id=-1)
    tps = (out.stats.steps - 1) / out.stats.decode_s
    floor = bw / weight_bytes
    print(f"\n1.5B shape, batch 1 decode: {tps:.1f} tok/s; floor {floor:.0f} tok/s "
          f"({weight_bytes / 1e9:.2f} GB of weights at {bw / 1e12:.2f} TB/s measured): {tps / floor:.1%} of it")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", default="1,64", help="comma-separated batch sizes")
    ap.add_argument("--every", type=int, default=64, help="generated tokens per segment (an action closes each)")
    ap.add_argument("--obs-tokens", type=int, default=100, help="tokens per injected observation")
    ap.add_argument("--prompt-len", type=int, default=64, help="prompt tokens")
    ap.add_argument("--hidden", type=int, default=128, help="model width")
    ap.add_argument("--layers", type=int, default=2, help="decoder layers")
    ap.add_argument("--heads", type=int, default=4, help="query heads")
    ap.add_argument("--kv-heads", type=int, default=2, help="key/value heads")
    ap.add_argument("--inter", type=int, default=384, help="MLP width")
    ap.add_argument("--vocab", type=int, default=4096, help="vocabulary size")
    ap.add_argument("--no-hf", action="store_true", help="skip the transformers baseline")
    ap.add_argument("--skip-1p5b", action="store_true", help="on CUDA, skip the 1.5B decode-floor measurement")
    ap.add_argument("--decode-tokens", type=int, default=256, help="tokens decoded for the 1.5B measurement")
    ap.add_argument("--reps", type=int, default=2, help="runs of each measurement (the best is reported)")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads for torch (0: torch's default)")
    # every rollout acts exactly --max-actions times; greedy by default, so that the kept cache and the
    # re-prefill can be checked to write the same trajectories (a temperature times the draw too)
    add_sampling_args(ap, only=("temperature", "top_p", "max_actions"), temperature=0.0, max_actions=4)
    a = ap.parse_args()
    a.batches = [int(b) for b in a.batches.split(",")]
    if a.threads and not torch.cuda.is_available():
        torch.set_num_threads(a.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    name = torch.cuda.get_device_name() if device == "cuda" else f"CPU, {torch.get_num_threads()} torch threads"
    print(f"device: {name}, dtype {dtype}")
    multi_turn(a, device, dtype, sync)
    if device == "cuda" and not a.skip_1p5b:
        decode_floor(a, sync)


if __name__ == "__main__":
    main()
