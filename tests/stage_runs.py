"""What the stage-script tests share (tests/conftest.py builds the tiny world and checkpoints with it):
running a script as a user does, reading what it logged and saved, a search server that counts what it
is sent, and the reward substitution that lets a ~40k-parameter model earn GRPO rewards."""
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest
import torch

import checkpoints
import common
import env
from model import Qwen2, Qwen2Config
from tokenizer import Tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "AUTOCOA_KERNELS": "torch"}
TINY = ["--hidden", "32", "--intermediate", "64", "--layers", "2", "--heads", "2", "--kv-heads", "1",
        "--seq-len", "64", "--vocab-size", "400"]


def descendants(pid):
    """Every process below `pid` (children, their children, ...), from /proc."""
    children = {}
    for d in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


def run_script(*args, check=True, timeout=300):
    """`python <args>` from the repo root; on failure the assertion shows the output's tail. A run past
    `timeout` (a hang) is killed with every process it started (torchrun's workers too) and fails."""
    proc = subprocess.Popen([sys.executable, *map(str, args)], cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        for pid in [proc.pid] + descendants(proc.pid):  # torchrun starts each worker in a session of its own
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        out, err = proc.communicate()
        pytest.fail(f"{' '.join(map(str, args))}: no result after {timeout} s (hung?)\n{out[-2000:]}\n{err[-2000:]}")
    p = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    if check:
        assert p.returncode == 0, f"{' '.join(map(str, args))} -> {p.returncode}\n{out[-3000:]}\n{err[-3000:]}"
    return p


def run_scripts(*commands, check=True):
    """run_script(*command, check=check) for each command, all at once (independent runs: on a 2-core machine
    two go at the speed of one); their results, in order. A failure is reported as run_script reports it."""
    with ThreadPoolExecutor(len(commands)) as pool:
        return list(pool.map(lambda args: run_script(*args, check=check), commands))


def main_of(module, monkeypatch, *args):
    """`python module.py args...` as module.main() in this process, for a run that stops at an error: that needs no
    process of its own (each start costs seconds of imports). The error is the exception main() raises. The run
    keeps its --out locked for the rest of this process (checkpoints.lock_out): later runs there go in-process too."""
    monkeypatch.setattr(sys, "argv", [module.__name__ + ".py", *map(str, args)])
    return module.main()


def metrics(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def last_per_step(rows):
    """step -> row, the last one logged for each step (a resumed run logs the re-run steps again)."""
    return {r["step"]: r for r in rows}


def assert_loss_down(rows, key="loss", factor=0.85):
    losses = [r[key] for r in rows]
    assert all(math.isfinite(x) for x in losses), losses
    assert losses[-1] < factor * losses[0], f"{key} did not go down: {losses}"
    assert sum(losses[-3:]) < sum(losses[:3]), f"{key} did not go down: {losses}"


def weights(path):
    return Qwen2.from_pretrained(path).state_dict()


def assert_complete_checkpoint(path, step):
    """Every file of a checkpoint is there, the weights load strictly and are finite, and the trainer
    state is the one of `step`."""
    assert re.fullmatch(rf"step_{step:06d}(_1)?", os.path.basename(path)), path  # _1: checkpoints.save_checkpoint
    for f in ("config.json", "model.safetensors", "tokenizer.json", "trainer_state.pt", "args.json"):
        assert os.path.isfile(os.path.join(path, f)), f"{path} lacks {f}"
    state = torch.load(os.path.join(path, "trainer_state.pt"), map_location="cpu", weights_only=False)
    assert state["step"] == step
    w = weights(path)
    assert all(t.isfinite().all() for t in w.values())
    Tokenizer.from_pretrained(path)
    return w, state


def latest_step(out):
    path = checkpoints.latest_checkpoint(out)
    assert path is not None, f"{out}: no valid 'latest'"
    return path, int(os.path.basename(path).split("_")[1])


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class CountingSearch:
    """The world's BM25 behind a Search-R1 server, counting every query it is sent."""

    def __init__(self, corpus):
        self.inner = env.BM25Search.from_jsonl(corpus)
        self.queries = []

    def __len__(self):
        return len(self.inner)

    def search(self, queries, topk=3):
        self.queries += queries
        return self.inner.search(queries, topk)


# A ~40k-parameter model never answers a question right, so the EM reward would be 0 for every rollout
# and GRPO would have nothing to learn from. The scripts run unchanged except for the reward, which here
# pays for opening a search (the "decide to act" behaviour, and one the tiny model shows sometimes).
GRPO_ACT_REWARD = """import os, runpy, sys
sys.path.insert(0, {root!r})
import env
env.reward = lambda completion, golds, tags=env.TAGS: float(tags.search_open in completion)
sys.argv[0] = os.path.join({root!r}, {script!r})
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def check_grpo_run(out, spy, init, n_sim, n_steps):
    """Modes in order, no real call while simulating (though the model acted), every real call logged
    (against the server's own count) and saved with the checkpoints."""
    rows = metrics(out)
    val = [r for r in rows if "val_reward" in r]  # the objective on fixed dev prompts, before and after training
    rows = [r for r in rows if "mode" in r]
    assert [r["step"] for r in val] == [0, n_steps]
    assert all(0 <= r[k] <= 1 for r in val for k in ("val_reward", "val_greedy"))
    assert [r["mode"] for r in rows] == ["sim"] * n_sim + ["real"] * (n_steps - n_sim)
    assert all(math.isfinite(r[k]) for r in rows for k in ("kl", "pg", "grad_norm", "reward"))
    assert [r["real_search_calls"] for r in rows[:n_sim]] == [0] * n_sim
    assert sum(r["actions"] for r in rows[:n_sim]) > 0  # it did act while simulating: the 0 above means something
    # every real call counted: training calls in real_search_calls, validation calls apart, and apart from
    # those the start-up check of each rank (env.RemoteSearch.check), which is no call of the run
    calls = [q for q in spy.queries if q != "start-up check"]
    assert rows[-1]["real_search_calls"] + sum(r["val_search_calls"] for r in val) == len(calls)
    _, sim_state = assert_complete_checkpoint(os.path.join(out, f"step_{n_sim:06d}"), n_sim)  # end of RL-1
    assert sim_state["extra"]["real_search_calls"] == 0
    _, state = assert_complete_checkpoint(checkpoints.latest_checkpoint(out), n_steps)
    assert state["extra"] == {"real_search_calls": rows[-1]["real_search_calls"], "failed_search_calls": 0,
                              "reference": os.path.abspath(init)}
    return rows


def tiny_setup(tok):
    cfg = Qwen2Config(vocab_size=tok.vocab_size, hidden_size=16, intermediate_size=24, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, eos_token_id=tok.eos_id)
    net = Qwen2(cfg).init_weights(seed=0)
    args = SimpleNamespace(lr=1e-2, weight_decay=0.0, warmup=0, steps=10, grad_clip=1.0, out=None)
    opt = common.make_optimizer(net, args)
    return net, opt, args
