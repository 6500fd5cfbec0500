"""Mixed precision that trains: fp32 master weights and optimizer state, bf16 compute (common.load_model),
and the memory that scheme needs at 1.5B and 7B (bench/memory_plan.py).

    python -m pytest -q tests/test_precision.py

The SFT test runs sft_coa.py as a user does, on a random tiny Qwen2 and a tiny world built once.
"""
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

import checkpoints
import common
from bench import memory_plan
from model import Qwen2, Qwen2Config
from tiny_sft import tiny_sft

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "AUTOCOA_KERNELS": "torch"}


def run_script(*args):
    p = subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, env=ENV, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, f"{p.args}\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}"
    return p


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, world):
    """(data dir with 8 stage-2 trajectories, a random tiny Qwen2 saved in fp32 with the world's tokenizer)."""
    root = tmp_path_factory.mktemp("precision")
    data, init = tiny_sft(root, world, torch.float32)
    return data, init


def sft(tiny, out, dtype):
    """30 steps of stage-2 SFT at lr 2e-5, the whole 8-trajectory file as every step's batch (so each step's
    loss is measured on the same batch and the curve is free of sampling noise); (losses, final weights)."""
    data, init = tiny
    run_script("sft_coa.py", "--mask-obs", "--data", data, "--init", init, "--out", out, "--dtype", dtype,
               "--lr", 2e-5, "--warmup", 0, "--steps", 30, "--batch-size", 8, "--max-len", 384, "--save-every", 100)
    with open(os.path.join(out, "metrics.jsonl")) as f:
        losses = [json.loads(line)["loss"] for line in f]
    return losses, Qwen2.from_pretrained(checkpoints.latest_checkpoint(out)).state_dict()


def test_bf16_sft_trains_like_fp32(tiny, tmp_path):
    """--dtype bfloat16 is the compute dtype, not the weights': the weights and AdamW moments stay fp32, so
    updates of ~lr = 2e-5 (below half a bf16 ulp of any weight above ~0.008 in size, and of every RMSNorm
    weight at 1.0) are kept. With bf16 weights they rounded away: about a quarter of the weights moved, none
    of the norms, and the loss fell a third as far as in fp32."""
    init = Qwen2.from_pretrained(tiny[1]).state_dict()
    with ThreadPoolExecutor(2) as pool:  # two independent runs at once (two cores)
        (l32, w32), (l16, w16) = pool.map(lambda dtype: sft(tiny, tmp_path / dtype, dtype), ("float32", "bfloat16"))
    # The fp32 decrease is large against what bf16 compute alone changes (the first loss, same weights).
    d32, d16 = l32[0] - l32[-1], l16[0] - l16[-1]
    assert d32 > 50 * abs(l16[0] - l32[0]), (l32, l16)
    assert 0.8 < d16 / d32 < 1.25, (d16, d32)
    # Every weight moved (the checkpoint's torch_dtype is float32, so the export holds the masters), except
    # input embedding rows of tokens absent from the data, which get no gradient.
    assert all(w.dtype == torch.float32 for w in w16.values())
    for w in (w32, w16):
        names = [k for k in w if k != "model.embed_tokens.weight"]
        moved = sum(int((w[k] != init[k]).sum()) for k in names) / sum(w[k].numel() for k in names)
        assert moved >= 0.99, moved
        assert all(not torch.equal(w[k], init[k]) for k in names if "norm" in k)


def test_forward_under_autocast_computes_log_probs_in_fp32():
    """model.py under torch.autocast on fp32 weights: log-probs come out fp32 and match the fp32 forward to bf16
    accuracy (RMSNorm and the log-softmax in fp32); gradients land in the fp32 weights; the sampler's cache
    takes the compute dtype."""
    cfg = Qwen2Config(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2)
    net = Qwen2(cfg).init_weights(seed=1)
    ids = torch.randint(0, 97, (2, 11), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    ref, m = common.sequence_logprobs(net, ids, mask, "cpu")
    net.compute_dtype = torch.bfloat16  # as common.load_model sets it
    lp, _ = common.sequence_logprobs(net, ids, mask, "cpu")
    assert lp.dtype == torch.float32 and torch.equal(lp == 0, ~m)
    assert torch.allclose(lp, ref, atol=0.05) and not torch.equal(lp, ref)  # bf16 matmuls did run
    (-lp.sum()).backward()
    assert all(p.grad.dtype == torch.float32 and p.grad.abs().sum() > 0 for p in net.parameters())
    from sample import sample

    class Tok:
        eos_id = 0
        decode = staticmethod(lambda ids: "".join(chr(97 + i % 26) for i in ids))
        encode = staticmethod(lambda text: [ord(c) % 97 for c in text])

    with torch.no_grad(), common.autocast(net):
        out = sample(net, Tok(), [[5, 6, 7]], mode="none", max_new_tokens=4, greedy=True)
    assert len(out[0].completion) >= 1


# ============================================================================= bench/memory_plan.py

def oracle_jobs(folder):
    """What this module asks transformers (tests/conftest.py's oracle fixture batches it with other modules')."""
    return {"7b": dict(task="count_parameters", config=memory_plan.PRESETS["7b"])}


def test_memory_plan_counts_parameters_by_hand(tmp_path, capsys, oracle):
    """R1-Distill-Qwen-7B, counted by hand: per block, q 3584*3584 + 3584, k and v 3584*512 + 512 each,
    o 3584*3584, MLP 3*3584*18944, two norms 2*3584: 233,057,792; 28 blocks 6,525,618,176; embedding and
    lm_head 152064*3584 each (untied) and the final norm 3584: 7,615,616,512 in all (the "7B" is 7.6e9).
    The same from transformers' Qwen2 on the meta device, and from a config.json file."""
    block, root = memory_plan.param_counts(Qwen2Config(**memory_plan.PRESETS["7b"]))
    assert block == 233_057_792 and 28 * block + root == 7_615_616_512
    block, root = memory_plan.param_counts(Qwen2Config(**memory_plan.PRESETS["1.5b"]))
    assert 28 * block + root == 1_777_088_000  # R1-Distill-Qwen-1.5B: "1.78B"
    assert oracle[__name__]["7b"][1] == 7_615_616_512  # transformers' count (oracle_jobs)
    # a config.json gives what the preset gives; the entries are the formulas of the docstring
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**memory_plan.PRESETS["7b"], "torch_dtype": "bfloat16", "rope_theta": 10000.0}))
    phases = memory_plan.main(["--config", str(path), "--gpus", "8"])
    assert phases == memory_plan.main(["--preset", "7b", "--gpus", "8"])
    P = 7_615_616_512
    assert phases["SFT"]["fp32 master weights (4P/N)"] == 4 * P / 8
    assert phases["GRPO update"]["Adam moments, fp32 (8P/N)"] == 8 * P / 8
    assert phases["GRPO sample"]["whole policy gathered, bf16 (2P)"] == 2 * P
    # 48 prompts x 5 / 8 GPUs = 30 rollouts of 512 + 4096 tokens; k and v, 28 layers, 4 kv heads x 128, bf16
    assert phases["GRPO sample"]["KV cache (30 rollouts x 4608 tokens)"] == 2 * 28 * 30 * 4608 * 512 * 2
    out = capsys.readouterr().out
    assert "7.62e9 parameters" in out and "NO" not in out  # 8 x 80 GiB holds every phase
    memory_plan.main(["--preset", "7b", "--gpus", "1"])
    out = capsys.readouterr().out
    assert "SFT does not fit" in out and "GRPO sample does not fit" in out and "CPUOffloadPolicy" in out
