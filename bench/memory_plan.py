"""Memory per GPU for SFT and GRPO on a real checkpoint, worked out from its config.json, before renting GPUs.

The scheme is the one common.load_model sets up: FSDP2 full sharding over --gpus (each decoder block and
the root module its own unit), activation checkpointing per block (--grad-checkpointing), fp32 master
weights, fp32 gradients and fp32 Adam moments, sharded; bf16 compute (MixedPrecisionPolicy: bf16 copies
all-gathered one block at a time, gradients reduce-scattered in fp32); the frozen GRPO reference in bf16,
sharded, with no gradients or optimizer. P is the parameter count, N the number of GPUs:

    fp32 master weights          4P/N       sharded
    fp32 gradients               4P/N       sharded (absent while GRPO samples: zero_grad(set_to_none))
    Adam exp_avg + exp_avg_sq    8P/N       sharded
    bf16 weights in flight       2 x (root + 2 blocks): the root unit (embedding, final norm, lm_head)
                                 stays gathered through forward and backward; a block and the prefetched next
    gradients in flight          a block's and the root's unsharded bf16 gradients + their fp32 copies for
                                 the reduce-scatter (the root's, embedding + lm_head, are the large ones)
    frozen reference             2P/N       bf16, sharded (GRPO)
    whole policy gathered        2P         bf16, on every GPU while GRPO samples: common.unsharded
                                 gathers it so that ranks whose rollouts end at different steps issue no
                                 collectives inside the sampler
    KV cache                     2 (k, v) x layers x rollouts per GPU x kv heads x (prompt + new tokens)
                                 x head_dim x 2 bytes; rollouts per GPU = prompts x group / N
    activations                  at --micro-tokens tokens per forward: each block's bf16 input kept for the
                                 recompute, one block's live set during its backward, one chunk of
                                 bf16 logits (kernels/logprobs.py) and the hidden states in and out of it

GRPO's phases do not overlap: sampling (whole policy gathered, KV cache, no gradients), then reference
and policy log-probs with the update (as SFT, plus the reference shard). Each column is one phase's peak.
Not counted: the CUDA context and cuBLAS workspaces, allocator fragmentation, NCCL buffers; a plan is
called fitting when it leaves 10% of the GPU for those. Activation figures are estimates (tensor sizes
per token, counted from model.py's forward); the state terms are exact byte counts.

    python bench/memory_plan.py --preset 7b --gpus 8
    python bench/memory_plan.py --preset 1.5b --gpus 8
    python bench/memory_plan.py --config path/to/DeepSeek-R1-Distill-Qwen-7B/config.json --gpus 8 \\
        --batch-size 48 --group-size 5 --prompt-len 512 --max-new-tokens 4096 --micro-tokens 8192
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from model import Qwen2Config  # noqa: E402

GiB = 2**30
# The two R1-Distill checkpoints, the fields that size them (their config.json files, as published).
PRESETS = {
    "1.5b": dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                 num_attention_heads=12, num_key_value_heads=2, tie_word_embeddings=False),
    "7b": dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
               num_attention_heads=28, num_key_value_heads=4, tie_word_embeddings=False),
}
LOGIT_CHUNK = 2048  # rows of logits the masked log-prob kernel holds at once (kernels/logprobs.py)


def param_counts(cfg):
    """(per block, root) parameter counts of a Qwen2: the root holds the embedding, the final norm and,
    when untied, the lm_head. q/k/v have biases, o_proj and the MLP do not (model.py)."""
    C, I, hd = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    q, kv = cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd
    block = (2 * C  # input_layernorm, post_attention_layernorm
             + C * q + q + 2 * (C * kv + kv)  # q_proj, k_proj, v_proj with biases
             + q * C  # o_proj
             + 3 * C * I)  # gate, up, down
    root = cfg.vocab_size * C * (1 if cfg.tie_word_embeddings else 2) + C
    return block, root


def plan(cfg, gpus, micro_tokens, prompts, group, prompt_len, max_new_tokens):
    """Bytes per GPU, {phase: {item: bytes}} for the phases "SFT", "GRPO sample", "GRPO update"."""
    block, root = param_counts(cfg)
    L, C, I, V = cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    kv = cfg.num_key_value_heads * cfg.head_dim
    P = L * block + root
    T = micro_tokens
    state = {
        "fp32 master weights (4P/N)": 4 * P / gpus,
        "fp32 gradients (4P/N)": 4 * P / gpus,
        "Adam moments, fp32 (8P/N)": 8 * P / gpus,
        "bf16 weights in flight (root + 2 blocks)": 2 * (root + 2 * block),
        "gradients in flight (bf16 + fp32 copy)": (2 + 4) * (root + block),
    }
    # One block's live set while it is recomputed and differentiated, per token: the bf16 tensors its
    # forward saves (two norm outputs, q, k, v, rotated q and k, attention output, o_proj output; gate, up,
    # silu(gate), their product, down output) and the fp32 norm inputs, doubled for the gradients flowing back.
    block_live = 2 * (2 * (8 * C + 2 * kv + 4 * I) + 4 * 2 * C)
    acts = {
        "activations at --micro-tokens": (L * T * C * 2  # each block's bf16 input, kept for the recompute
                                          + T * block_live
                                          + min(T, LOGIT_CHUNK) * V * 2  # one chunk of bf16 logits
                                          + 2 * T * C * 2),  # final hidden and its gradient
    }
    rollouts = -(-prompts * group // gpus)  # per GPU, rounded up
    S = prompt_len + max_new_tokens
    sample = {
        "fp32 master weights (4P/N)": state["fp32 master weights (4P/N)"],
        "Adam moments, fp32 (8P/N)": state["Adam moments, fp32 (8P/N)"],
        "frozen reference, bf16 (2P/N)": 2 * P / gpus,
        "whole policy gathered, bf16 (2P)": 2 * P,
        f"KV cache ({rollouts} rollouts x {S} tokens)": 2 * L * rollouts * S * kv * 2,
        # prefill of every prompt at once: the residual stream and one block's MLP intermediates (bf16),
        # and the fp32 logits of the rows being sampled
        "prefill and sampling buffers": rollouts * prompt_len * (2 * C + 3 * I) * 2 + rollouts * V * 4,
    }
    return {
        "SFT": {**state, **acts},
        "GRPO sample": sample,
        "GRPO update": {**state, "frozen reference, bf16 (2P/N)": 2 * P / gpus, **acts},
    }, P, block, root


def advice(phases, gpus, capacity, args, fits_from):
    """What to change, for each phase over the usable memory."""
    out = []
    usable = 0.9 * capacity
    for name, items in phases.items():
        total = sum(items.values())
        if total <= usable:
            continue
        big = sorted(items.items(), key=lambda kv: -kv[1])[:2]
        out.append(f"{name} does not fit ({total / GiB:.1f} GiB > {usable / GiB:.1f} usable); "
                   f"largest: {', '.join(f'{k} {v / GiB:.1f}' for k, v in big)}")
        if name == "GRPO sample":
            kv_key = next(k for k in items if k.startswith("KV cache"))
            rest = total - items[kv_key]
            per_rollout = items[kv_key] / max(1, -(-args.batch_size * args.group_size // gpus))
            room = int((usable - rest) // per_rollout) if usable > rest else 0
            out.append(f"  - the KV cache has room for {room} rollouts of {args.prompt_len + args.max_new_tokens} "
                       f"tokens per GPU: fewer prompts x group per step (--batch-size, --group-size), shorter "
                       f"--max-new-tokens, or sample the rollouts in several sampler calls")
            out.append("  - or stop gathering the whole policy to sample (common.unsharded): gather block by "
                       "block inside the sampler, or sample with a separate inference engine; saves "
                       f"{items['whole policy gathered, bf16 (2P)'] / GiB:.1f} GiB per GPU")
        else:
            act = items["activations at --micro-tokens"]
            if act > 0.1 * total:
                out.append(f"  - --micro-tokens {args.micro_tokens} costs {act / GiB:.1f} GiB of activations: "
                           "halve it (the same step in more micro-batches)")
        sharded = sum(v for k, v in items.items() if "P/N" in k)
        out.append(f"  - the sharded state ({sharded / GiB:.1f} GiB) shrinks with more GPUs "
                   f"({fits_from or 'more than 64'} GPUs fit every phase), or moves to host memory with FSDP2's "
                   "CPUOffloadPolicy (slower steps)")
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", help="a checkpoint's config.json")
    src.add_argument("--preset", choices=sorted(PRESETS), help="R1-Distill-Qwen-1.5B or -7B's dimensions")
    ap.add_argument("--gpus", type=int, default=8, help="GPUs the state is sharded over (FSDP2, one node)")
    ap.add_argument("--gpu-gib", type=float, default=80, help="memory per GPU in GiB")
    ap.add_argument("--micro-tokens", type=int, default=2048, help="padded tokens per forward/backward")
    ap.add_argument("--batch-size", type=int, default=48, help="GRPO prompts per step (the paper's 48)")
    ap.add_argument("--group-size", type=int, default=5, help="GRPO rollouts per prompt (the paper's 5)")
    ap.add_argument("--prompt-len", type=int, default=512, help="tokens of the longest prompt")
    ap.add_argument("--max-new-tokens", type=int, default=4096,
                    help="rollout budget after the prompt, observations included")
    args = ap.parse_args(argv)
    if args.gpus < 1 or args.micro_tokens < 1:
        ap.error("--gpus and --micro-tokens must be positive")
    cfg = Qwen2Config.from_json(args.config) if args.config else Qwen2Config(**PRESETS[args.preset])
    phases, P, block, root = plan(cfg, args.gpus, args.micro_tokens, args.batch_size, args.group_size,
                                  args.prompt_len, args.max_new_tokens)
    capacity = args.gpu_gib * GiB
    print(f"{args.config or 'preset ' + args.preset}: {P / 1e9:.2f}e9 parameters ({cfg.num_hidden_layers} blocks "
          f"x {block / 1e6:.1f}M + root {root / 1e6:.1f}M: embedding, final norm"
          f"{'' if cfg.tie_word_embeddings else ', lm_head'})")
    print(f"{args.gpus} GPU(s) x {args.gpu_gib:g} GiB; FSDP2 + activation checkpointing, fp32 masters and Adam, "
          f"bf16 compute; --micro-tokens {args.micro_tokens}; GRPO {args.batch_size} prompts x {args.group_size}, "
          f"{args.prompt_len} + {args.max_new_tokens} tokens")
    items = list(dict.fromkeys(k for p in phases.values() for k in p))
    width = max(map(len, items)) + 2
    print(f"{'GiB per GPU':<{width}}" + "".join(f"{name:>13}" for name in phases))
    for item in items:
        print(f"{item:<{width}}" + "".join(f"{p[item] / GiB:13.2f}" if item in p else f"{'-':>13}"
                                          for p in phases.values()))
    totals = [sum(p.values()) for p in phases.values()]
    print(f"{'total':<{width}}" + "".join(f"{t / GiB:13.2f}" for t in totals))
    print(f"{'fits (<= 90% of the GPU)':<{width}}" + "".join(f"{'yes' if t <= 0.9 * capacity else 'NO':>13}"
                                                             for t in totals))
    fits_from = next((n for n in range(1, 65) if all(
        sum(p.values()) <= 0.9 * capacity for p in plan(cfg, n, args.micro_tokens, args.batch_size, args.group_size,
                                                          args.prompt_len, args.max_new_tokens)[0].values())), None)
    for line in advice(phases, args.gpus, capacity, args, fits_from):
        print(line)
    return phases


if __name__ == "__main__":
    main()
