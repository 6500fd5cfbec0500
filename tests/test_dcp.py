"""The sharded training state (checkpoints.save_checkpoint / restore): step_N/train_state/ is a
torch.distributed.checkpoint of the fp32 master weights and the AdamW state, written by every rank for its
own shards and read back by any number of ranks; the HF-layout export beside it is in config.json's dtype.

    python -m pytest -q tests/test_dcp.py        # 1 process and 2 gloo ranks (torchrun) on the CPU

The model stands in for R1-Distill: a random tiny Qwen2 saved in bf16, trained with --dtype bfloat16, so
the export (bf16) is not the masters (fp32), and only a resume from train_state/ can be exact.
"""
import json
import os
import shutil
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

from model import Qwen2
from tiny_sft import tiny_sft

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "AUTOCOA_KERNELS": "torch"}
STEPS = ["--steps", 4, "--save-every", 2, "--batch-size", 8, "--lr", 1e-3, "--warmup", 0, "--max-len", 384,
         "--dtype", "bfloat16"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(ranks, *args):
    """`python args...` on one process, or under torchrun on `ranks` gloo ranks."""
    cmd = [sys.executable] + (["-m", "torch.distributed.run", "--nproc_per_node", str(ranks), "--master-port",
                               str(free_port())] if ranks > 1 else []) + [str(a) for a in args]
    p = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, f"{' '.join(cmd)}\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}"
    return p


def train_state(ckpt, tmp):
    """A checkpoint's train_state/ as full tensors, read on this one process: {"model", "optimizer"}."""
    dest = os.path.join(tmp, f"{os.path.basename(os.path.dirname(ckpt))}-{os.path.basename(ckpt)}.pt")
    dcp_to_torch_save(os.path.join(ckpt, "train_state"), dest)
    return torch.load(dest, weights_only=False)


def assert_same(a, b, where=""):
    """Nested dicts/lists of tensors and numbers: equal exactly, tensors bit for bit."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), where
    else:
        assert a == b, where


def losses(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return {r["step"]: r["loss"] for r in map(json.loads, f)}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, world):
    """(data dir with 8 stage-2 trajectories, a random tiny Qwen2 saved in bf16 with the world's tokenizer)."""
    root = tmp_path_factory.mktemp("dcp")
    data, init = tiny_sft(root, world, torch.bfloat16)
    return data, init, root


@pytest.fixture(scope="module")
def straight(tiny):
    """ranks -> the --out of 4 uninterrupted SFT steps on that many ranks (checkpoints at steps 2 and 4); the
    run on 1 rank and the one on 2 start together."""
    data, init, root = tiny
    runs = {ranks: str(root / f"straight{ranks}") for ranks in (1, 2)}
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda ranks: launch(ranks, "sft_coa.py", "--mask-obs", "--data", data, "--init", init,
                                           "--out", runs[ranks], *STEPS), runs))
    return runs


@pytest.mark.parametrize("ranks", [1, 2])
def test_resume_is_bit_exact(tiny, straight, tmp_path, ranks):
    """Cut after step 2 and resumed, a run ends with the masters and AdamW state of the run never cut, bit for
    bit, and logs the same losses. The bf16 export of step 2 is not its masters: a resume that started from
    the export (as one that reloads only the HF weights would) could not be exact."""
    data, init, _ = tiny
    full = straight[ranks]
    cut = str(tmp_path / "cut")
    shutil.copytree(full, cut)
    shutil.rmtree(os.path.join(cut, "step_000004"))
    with open(os.path.join(cut, "latest"), "w") as f:
        f.write("step_000002\n")
    p = launch(ranks, "sft_coa.py", "--mask-obs", "--data", data, "--init", init, "--out", cut, *STEPS, "--resume")
    assert f"[resume] {os.path.join(cut, 'step_000002')} at step 2" in p.stdout
    assert_same(train_state(os.path.join(full, "step_000004"), tmp_path),
                train_state(os.path.join(cut, "step_000004"), tmp_path))
    assert losses(cut) == losses(full) and sorted(losses(cut)) == [0, 1, 2, 3]
    # the export is config.json's dtype (bf16), the rounding of the fp32 masters, which it is not
    ckpt = os.path.join(full, "step_000002")
    masters = train_state(ckpt, tmp_path)["model"]
    export = Qwen2.from_pretrained(ckpt).state_dict()
    assert all(export[k].dtype == torch.bfloat16 and torch.equal(export[k], v.to(torch.bfloat16))
               for k, v in masters.items())
    assert all(v.dtype == torch.float32 for v in masters.values())
    assert any(not torch.equal(export[k].float(), v) for k, v in masters.items())


RESAVE = """import sys
sys.path.insert(0, {root!r})
from types import SimpleNamespace
import checkpoints
import common
args = SimpleNamespace(resume=True, out={src!r}, init=None, data={data!r}, device="cpu", dtype="bfloat16", seed=0,
                       threads=None, lr=1e-3, weight_decay=0.0)  # the saved run's (checkpoints.check_resume_args)
run = common.Run(args)
path, state = checkpoints.resume_or_init(run, args, default_init=None)
model, tok = common.load_model(path, run)
opt = common.make_optimizer(model, args)
step = checkpoints.restore(model, opt, state)
checkpoints.save_checkpoint(run, {dst!r}, step, model, tok, opt, args)
run.close()
"""


@pytest.mark.parametrize("saved, loaded", [(2, 1), (1, 2)])
def test_train_state_moves_between_world_sizes(tiny, straight, tmp_path, saved, loaded):
    """A checkpoint written by `saved` ranks, resumed (checkpoints.resume_or_init + restore) on `loaded` ranks and
    saved again there, holds the same masters, moments and step counts, bit for bit: each rank of the
    new world read exactly its shards of what the old world wrote, and wrote them back."""
    src = str(tmp_path / "src")
    shutil.copytree(straight[saved], src)
    with open(os.path.join(src, "latest"), "w") as f:
        f.write("step_000002\n")
    dst = str(tmp_path / "dst")
    script = tmp_path / "resave.py"
    script.write_text(RESAVE.format(root=ROOT, src=src, dst=dst, data=tiny[0]))
    launch(loaded, script)
    a, b = train_state(os.path.join(src, "step_000002"), tmp_path), train_state(os.path.join(dst, "step_000002"),
                                                                                 tmp_path)
    assert_same(a, b)
    assert float(a["optimizer"]["state"]["model.norm.weight"]["step"]) == 2
    w1, w2 = (Qwen2.from_pretrained(os.path.join(d, "step_000002")).state_dict() for d in (src, dst))
    assert_same(w1, w2)
