"""Checkpoints that fail loudly and never point at a bad or missing step: dtype and NaN/Inf checks at load,
the non-finite guard that keeps a good checkpoint, `latest` that never dangles, a run that will not write
into another run's --out by accident, normal file permissions, one metrics row per step, shard paths
that stay inside the checkpoint.

    python -m pytest -q tests/test_checkpoint.py

Unit tests build a ~5k-parameter model in memory; the script tests run sft_coa.py as a user does, on the
session's tiny world and base model (tests/conftest.py).
"""
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file, save_file

import checkpoints
import common
import sft_coa
from model import CheckpointError, Qwen2, Qwen2Config
from stage_runs import main_of, run_script, run_scripts

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "AUTOCOA_KERNELS": "torch"}
SFT = ["--mask-obs", "--batch-size", "4", "--warmup", "0", "--max-len", "512"]


def tiny_setup(tok):
    cfg = Qwen2Config(vocab_size=tok.vocab_size, hidden_size=16, intermediate_size=24, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, eos_token_id=tok.eos_id)
    net = Qwen2(cfg).init_weights(seed=0)
    args = SimpleNamespace(lr=1e-2, weight_decay=0.0, warmup=0, steps=10, grad_clip=1.0, out=None)
    return net, common.make_optimizer(net, args), args


def backward(net, seed=0):
    ids = torch.randint(0, net.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(seed))
    lp, m = common.sequence_logprobs(net, ids, torch.ones_like(ids), "cpu")
    (-lp.sum() / m.sum()).backward()


MASTER = SimpleNamespace(master=True, distributed=False, print=lambda *a: None)


def saved(tmp_path, tok, step=1):
    """A run directory with one checkpoint at `step`, and the model, optimizer and args that wrote it."""
    out = str(tmp_path / "run")
    net, opt, args = tiny_setup(tok)
    args.out = out
    backward(net)
    common.clip_and_step(net, opt, 0, args)
    checkpoints.save_checkpoint(MASTER, out, step, net, tok, opt, args)
    return out, net, opt, args


def step_dirs(out):
    return sorted(d for d in os.listdir(out) if d.startswith("step_"))


# ============================================================================= 5. dtypes and NaN/Inf at load

def rewrite(ckpt, name, fn):
    """Replace tensor `name` of ckpt's model.safetensors by fn(tensor)."""
    path = os.path.join(ckpt, "model.safetensors")
    state = load_file(path)
    state[name] = fn(state[name])
    save_file(state, path, metadata={"format": "pt"})
    return path


@pytest.fixture
def ckpt(tmp_path, tok):
    net, _, _ = tiny_setup(tok)
    net.save_pretrained(str(tmp_path / "m"))
    return str(tmp_path / "m")


@pytest.mark.parametrize("make, said", [
    (lambda t: t.to(torch.int32), r"has dtype I32, but a Qwen2's weights are floating point \(config.json's "
                                  r"torch_dtype: float32\)"),
    (lambda t: t.to(torch.float16), r"has dtype F16, but \S+ \(in .*model.safetensors\) has F32"),
])
def test_load_names_the_tensor_of_the_wrong_dtype(ckpt, make, said):
    path = rewrite(ckpt, "model.layers.0.mlp.up_proj.weight", make)
    with pytest.raises(CheckpointError, match=re.escape(path) + r": tensor model.layers.0.mlp.up_proj.weight " + said):
        Qwen2.from_pretrained(ckpt)


def test_load_rejects_a_config_dtype_that_is_not_floating_point(ckpt):
    with open(os.path.join(ckpt, "config.json")) as f:
        cfg = json.load(f)
    cfg["torch_dtype"] = cfg["dtype"] = "int8"
    with open(os.path.join(ckpt, "config.json"), "w") as f:
        json.dump(cfg, f)
    with pytest.raises(CheckpointError, match="torch_dtype 'int8' is not a floating-point type"):
        Qwen2.from_pretrained(ckpt)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_load_refuses_nan_or_inf_naming_the_tensor(ckpt, bad):
    def poison(t):
        t = t.clone()
        t.view(-1)[7] = bad
        return t
    path = rewrite(ckpt, "model.layers.0.self_attn.k_proj.bias", poison)
    with pytest.raises(CheckpointError, match=re.escape(path) + r": tensor model.layers.0.self_attn.k_proj.bias "
                                              r"holds NaN or Inf"):
        Qwen2.from_pretrained(ckpt, dtype=torch.float32)


def test_init_with_nan_weights_stops_before_training(tmp_path, world, base, monkeypatch):
    init = str(tmp_path / "init")
    shutil.copytree(checkpoints.latest_checkpoint(base), init)
    rewrite(init, "model.norm.weight", lambda t: t / 0 - t / 0)  # inf - inf: NaN everywhere
    with pytest.raises(CheckpointError, match=re.escape(init) + r".*tensor model\.norm\.weight holds NaN or Inf"):
        main_of(sft_coa, monkeypatch, "--data", world, "--init", init, "--out", tmp_path / "out", *SFT, "--steps", 2)
    assert not os.path.exists(tmp_path / "out" / "latest")


# ============================================================================= 6. the non-finite guard keeps a good checkpoint

def test_weights_made_non_finite_by_the_step_stop_the_run_naming_them(tmp_path, tok):
    """After every optimizer step the updated weights are checked (one fused max |w|): an update that makes
    one non-finite stops the run before anything saves it, naming it and the last good checkpoint."""
    out, net, opt, args = saved(tmp_path, tok)
    backward(net, 1)
    step = opt.step

    def overflowing_step():
        step()
        net.model.layers[0].mlp.down_proj.weight.data[2, 3] = float("inf")
    opt.step = overflowing_step
    with pytest.raises(FloatingPointError, match=r"non-finite weight model\.layers\.0\.mlp\.down_proj\.weight after "
                                                 r"the optimizer step of step 1; stopping\. Last good checkpoint: "
                                                 + re.escape(os.path.join(out, "step_000001"))):
        common.clip_and_step(net, opt, 1, args)


def test_an_overflowing_optimizer_step_is_a_clear_stop(tmp_path, tok):
    """AdamW's step size lr / (1 - beta1) overflows fp32 for lr 3e38: a FloatingPointError naming the step."""
    out, net, opt, args = saved(tmp_path, tok)
    args.lr = 3e38
    backward(net, 1)
    with pytest.raises(FloatingPointError, match=r"the optimizer step of step 1 overflowed .*Last good checkpoint: "
                                                 + re.escape(os.path.join(out, "step_000001"))):
        common.clip_and_step(net, opt, 1, args)


def test_a_non_finite_gradient_names_its_tensor(tmp_path, tok):
    out, net, opt, args = saved(tmp_path, tok)
    backward(net, 1)
    net.model.embed_tokens.weight.grad[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match=r"non-finite gradient norm nan at step 1 \(first non-finite "
                                                 r"gradient: model\.embed_tokens\.weight\)"):
        common.clip_and_step(net, opt, 1, args)


def test_save_refuses_non_finite_weights(tmp_path, tok):
    out, net, opt, args = saved(tmp_path, tok)
    with torch.no_grad():
        net.model.norm.weight[0] = float("nan")
    with pytest.raises(FloatingPointError, match=r"non-finite weight model\.norm\.weight at the save of step 2"):
        checkpoints.save_checkpoint(MASTER, out, 2, net, tok, opt, args)
    assert step_dirs(out) == ["step_000001"] and checkpoints.latest_checkpoint(out).endswith("step_000001")


def test_a_non_finite_loss_takes_latest_back_to_the_checkpoint_before(tmp_path, tok):
    """Checkpoint 2 holds the weights after 2 updates, saved before their loss was computed. When that loss
    (step 2's) is NaN, checkpoint 2 is not a good one: `latest` goes back to checkpoint 1, whose weights
    gave a finite loss, and checkpoint 2 is removed."""
    out, net, opt, args = saved(tmp_path, tok)
    checkpoints.save_checkpoint(MASTER, out, 2, net, tok, opt, args)
    checkpoints.check_finite(1.0, 2, out)  # finite: nothing happens
    assert checkpoints.latest_checkpoint(out).endswith("step_000002")
    good = os.path.join(out, "step_000001")
    with pytest.raises(FloatingPointError, match=r"non-finite loss nan at step 2; removed .*step_000002, whose "
                                                 r"weights gave it; stopping\. Last good checkpoint: " + re.escape(good)):
        checkpoints.check_finite(float("nan"), 2, out)
    assert checkpoints.latest_checkpoint(out) == good and step_dirs(out) == ["step_000001"]
    with pytest.raises(FloatingPointError, match=r"Last good checkpoint: none \(start again"):
        checkpoints.check_finite(float("inf"), 1, out)
    assert checkpoints.latest_checkpoint(out) is None and step_dirs(out) == []


def test_a_non_finite_loss_leaves_the_checkpoint_the_run_started_from(tmp_path, tok):
    """A resumed run whose first loss is non-finite (say under a new --dtype) did not write the checkpoint
    it started from: that one stays, and `latest` with it; the error says which it was."""
    out, *_ = saved(tmp_path, tok)
    other = str(tmp_path / "resumed")
    shutil.copytree(out, other)  # written by "another process": this one never saved there
    start = os.path.join(other, "step_000001")
    with pytest.raises(FloatingPointError, match=f"at step 1; {re.escape(start)}, which this run started from, "
                                                 f"gave it; stopping. Last good checkpoint: none"):
        checkpoints.check_finite(float("nan"), 1, other)
    assert checkpoints.latest_checkpoint(other) == start and step_dirs(other) == ["step_000001"]


def test_huge_lr_never_leaves_latest_on_bad_weights(tmp_path, world, base, monkeypatch):
    """The reported runs: --lr 1e20 (step 0's update makes finite but 1e20-scale weights; step 1's loss is
    NaN) and --lr 3e38 (AdamW's update overflows). Resumed from a good 2-step run and saving every step,
    each must stop naming step_000002, leave `latest` on it with its weights unchanged and finite, and
    keep no later step. (The runs that stop call sft_coa.main() in this process: stage_runs.main_of.)"""
    good_run = tmp_path / "good"
    run_script("sft_coa.py", "--data", world, "--init", base, "--out", good_run, *SFT, "--steps", 2, "--lr", 1e-3,
               "--save-every", 1)
    before = Qwen2.from_pretrained(os.path.join(good_run, "step_000002")).state_dict()
    for lr, said in (("1e20", r"non-finite loss \S+ at step 3; removed \S+step_000003"),
                     ("3e38", r"the optimizer step of step 2 overflowed")):
        out = tmp_path / f"lr{lr}"
        shutil.copytree(good_run, out)
        with pytest.raises(FloatingPointError, match=said + r".*Last good checkpoint: " +
                           re.escape(str(out / "step_000002"))):
            main_of(sft_coa, monkeypatch, "--data", world, "--out", out, *SFT, "--steps", 8, "--lr", lr,
                    "--save-every", 1, "--resume", "--force-resume")  # a changed --lr, on purpose
        assert checkpoints.latest_checkpoint(str(out)) == str(out / "step_000002")
        assert step_dirs(out)[-1] == "step_000002"  # (step_000001 went when step_000003 was saved, under 1e20)
        after = Qwen2.from_pretrained(str(out / "step_000002")).state_dict()
        assert all(torch.equal(after[k], before[k]) for k in before)
    # from the starting weights: nothing good was ever saved, and `latest` is not left on step 1
    with pytest.raises(FloatingPointError, match=r"at step 1.*Last good checkpoint: none"):
        main_of(sft_coa, monkeypatch, "--data", world, "--init", base, "--out", tmp_path / "fresh", *SFT, "--steps", 4,
                "--lr", "1e20", "--save-every", 1)
    assert checkpoints.latest_checkpoint(str(tmp_path / "fresh")) is None and step_dirs(tmp_path / "fresh") == []


# ============================================================================= 8. `latest` never dangles; --out; modes; metrics; shards

def test_resaving_the_step_latest_names_never_leaves_it_dangling(tmp_path, tok, monkeypatch):
    """A second save of the step `latest` names (GRPO's RL-1 checkpoint after a resume) must not replace that
    directory in place: at every rename of the save, `latest` names a complete checkpoint. The copy goes
    to step_N_1 (and the next one back to step_N); the superseded one is removed after the switch."""
    out, net, opt, args = saved(tmp_path, tok, step=4)
    seen = []
    rename = os.rename

    def checked_rename(src, dst):
        rename(src, dst)
        path = checkpoints.latest_checkpoint(out)
        seen.append(path)
        assert path is not None and os.path.isfile(os.path.join(path, "trainer_state.pt")), (src, dst)
    monkeypatch.setattr(os, "rename", checked_rename)
    for name in ("step_000004_1", "step_000004", "step_000004_1"):
        with torch.no_grad():
            net.model.norm.weight.add_(1.0)
        checkpoints.save_checkpoint(MASTER, out, 4, net, tok, opt, args)
        assert checkpoints.latest_checkpoint(out) == os.path.join(out, name) and step_dirs(out) == [name]
        w = Qwen2.from_pretrained(os.path.join(out, name)).state_dict()
        assert torch.equal(w["model.norm.weight"], net.model.norm.weight)
    assert seen  # the check above ran
    assert checkpoints.step_of("step_000004_1") == checkpoints.step_of("step_000004") == 4


def test_checkpoints_get_normal_permissions(tmp_path, tok):
    umask = os.umask(0o022)
    try:
        out, *_ = saved(tmp_path, tok)
    finally:
        os.umask(umask)
    for root, dirs, files in os.walk(os.path.join(out, "step_000001")):
        assert stat.S_IMODE(os.stat(root).st_mode) == 0o755, root
        for f in files:
            assert stat.S_IMODE(os.stat(os.path.join(root, f)).st_mode) == 0o644, os.path.join(root, f)


def test_metrics_keep_one_row_per_step_after_a_resume(tmp_path):
    out = str(tmp_path)
    with open(os.path.join(out, "metrics.jsonl"), "w") as f:
        f.writelines(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in range(6))
        f.write('{"step": 6, "lo')  # a line cut by a kill
    m = common.Metrics(MASTER, out, 10, 4, "test")  # resumed at step 4: steps 4 and 5 are redone
    for s in range(4, 7):
        m.log(s, loss=2.0)
    m.close()
    with open(os.path.join(out, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    assert [r["step"] for r in rows] == list(range(7))
    assert [r["loss"] for r in rows] == [1.0] * 4 + [2.0] * 3


def test_a_run_into_an_existing_out_needs_resume_or_overwrite(tmp_path, world, base, monkeypatch, capsys):
    """After a first run (a process of its own), the others in this process (stage_runs.main_of)."""
    out = tmp_path / "out"
    args = ["--data", world, "--init", base, "--out", out, *SFT, "--lr", 1e-3]
    run_script("sft_coa.py", *args, "--steps", 3)
    (out / "rl1").mkdir()  # a nested run (GRPO's RL-1 checkpoints)
    (out / "rl1" / "latest").write_text("step_000003\n")
    with pytest.raises(SystemExit, match=re.escape(f"--out {out} already holds a run (latest, step_000003): pass "
                                                   "--resume")):
        main_of(sft_coa, monkeypatch, *args, "--steps", 2)
    with pytest.raises(SystemExit, match="--resume continues"):
        main_of(sft_coa, monkeypatch, *args, "--steps", 2, "--resume", "--overwrite")
    capsys.readouterr()
    main_of(sft_coa, monkeypatch, *args, "--steps", 2, "--overwrite")
    assert f"deleted the run that was in {out}" in capsys.readouterr().out
    assert step_dirs(out) == ["step_000002"] and not (out / "rl1").exists()
    with open(out / "metrics.jsonl") as f:
        assert [json.loads(line)["step"] for line in f] == [0, 1]  # the deleted run's rows are gone
    # --overwrite never deletes the checkpoint the run starts from
    with pytest.raises(SystemExit, match="lies inside --out"):
        main_of(sft_coa, monkeypatch, "--data", world, "--init", out / "step_000002", "--out", out, *SFT, "--steps", 2,
                "--overwrite")
    assert (out / "step_000002").is_dir()


HOLD = """import sys
sys.path.insert(0, {root!r})
from types import SimpleNamespace
import checkpoints
checkpoints.claim_out(SimpleNamespace(master=True, distributed=False, print=print),
                      SimpleNamespace(out={out!r}, resume=False, overwrite=False, init=None))
print("holding", flush=True)
sys.stdin.read()  # until the test closes stdin, or kills this process
"""


def test_two_runs_never_share_an_out(tmp_path):
    """The reported fault: two runs on one --out both started, one's save deleted the other's .tmp-step_*,
    and metrics.jsonl interleaved two seeds. Now the second is refused, naming --out and the first's PID,
    for as long as the first lives -- and no longer: a killed run leaves no stale lock."""
    out = str(tmp_path / "out")
    run = SimpleNamespace(master=True, distributed=False, print=lambda *a: None)
    args = SimpleNamespace(out=out, resume=False, overwrite=False, init=None)
    holder = subprocess.Popen([sys.executable, "-c", HOLD.format(root=ROOT, out=out)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        assert holder.stdout.readline() == "holding\n"
        said = f"--out {out} is in use by another run (pid {holder.pid} holds {out}/.lock): wait for it to end"
        with pytest.raises(SystemExit, match="^" + re.escape(said)):
            checkpoints.claim_out(run, args)
        with pytest.raises(SystemExit, match="^" + re.escape(said)):  # --resume too: it would save into the same --out
            checkpoints.claim_out(run, SimpleNamespace(**{**vars(args), "resume": True}))
        checkpoints.claim_out(SimpleNamespace(master=False, distributed=False), args)  # a rank > 0 never locks
    finally:
        holder.kill()  # SIGKILL: no clean-up of its own; the OS drops the lock
        holder.wait()
    checkpoints.claim_out(run, args)
    assert (tmp_path / "out" / ".lock").read_text() == f"{os.getpid()}\n"
    checkpoints.claim_out(run, args)  # this process holds it already: a second main() in one process goes on
    # a stage script, as a user starts it, while this process holds the --out: refused at once, exit status 1
    p = run_script("sft_coa.py", "--mask-obs", "--data", tmp_path, "--init", tmp_path / "none", "--out", out,
                   check=False)
    assert p.returncode == 1 and f"--out {out} is in use by another run (pid {os.getpid()} holds" in p.stderr, p.stderr


def saved_args(tmp_path, **values):
    """A checkpoint directory holding only args.json with `values`."""
    path = tmp_path / "step_000002"
    path.mkdir()
    (path / "args.json").write_text(json.dumps(values))
    return str(path)


def test_check_resume_args_lists_every_change_that_breaks_exactness(tmp_path, capsys):
    saved = dict(batch_size=4, lr=1e-3, steps=10, seed=0, data="runs/world", init="runs/sft1", save_every=50,
                 threads=None, device=None, force_resume=False, micro_tokens=2048, shape=[1, 2])
    path = saved_args(tmp_path, **saved)
    now = SimpleNamespace(**saved)
    checkpoints.check_resume_args(now, path)  # the same arguments
    # flags that change nothing computed; --init left out (the checkpoint holds the weights); a tuple as saved
    checkpoints.check_resume_args(SimpleNamespace(**{**saved, "save_every": 1, "threads": 2, "device": "cpu",
                                                     "micro_tokens": 512, "init": None, "shape": (1, 2)}), path)
    # a flag one side lacks (added since) cannot be compared
    checkpoints.check_resume_args(SimpleNamespace(**saved, new_flag=3), path)
    said = (f"--resume: --batch-size 4 -> 8, --init runs/sft1 -> runs/base, --steps 10 -> 20 (against {path}/args.json)"
            f": a run resumes exactly only with the arguments it was saved with; pass those, or --force-resume")
    changed = {**saved, "batch_size": 8, "steps": 20, "init": "runs/base", "save_every": 7}
    with pytest.raises(SystemExit, match="^" + re.escape(said)):
        checkpoints.check_resume_args(SimpleNamespace(**changed), path)
    checkpoints.check_resume_args(SimpleNamespace(**{**changed, "force_resume": True}), path)
    assert ("[resume] warning: --force-resume with --batch-size 4 -> 8, --init runs/sft1 -> runs/base, --steps 10 -> 20: "
            "this run no longer resumes exactly") in capsys.readouterr().out
    os.remove(os.path.join(path, "args.json"))
    with pytest.raises(FileNotFoundError, match="args.json is missing"):
        checkpoints.check_resume_args(now, path)


def test_resume_with_changed_arguments(tmp_path, world, base, monkeypatch):
    """The reported fault: --resume with another --batch-size ran on silently. Now it stops before the first
    step, naming the flag; --force-resume goes on, saying so; a change that computes nothing else goes on."""
    full = tmp_path / "full"
    args = ["sft_coa.py", "--data", world, "--init", base, *SFT, "--lr", 1e-3, "--steps", 4, "--save-every", 2]
    run_script(*args, "--out", full)

    def cut(name):
        out = tmp_path / name
        shutil.copytree(full, out)
        shutil.rmtree(out / "step_000004")
        (out / "latest").write_text("step_000002\n")
        return out
    out = cut("refused")  # refused before it trains: in this process (stage_runs.main_of)
    with pytest.raises(SystemExit, match="^" + re.escape(f"--resume: --batch-size 4 -> 8 (against "
                                                         f"{out / 'step_000002'}/args.json)")):
        main_of(sft_coa, monkeypatch, *args[1:], "--out", out, "--resume", "--batch-size", 8)
    assert checkpoints.latest_checkpoint(str(out)) == str(out / "step_000002")  # nothing trained, nothing saved
    assert [json.loads(line)["step"] for line in open(out / "metrics.jsonl")] == [0, 1, 2, 3]  # the log untouched
    forced, allowed = run_scripts(
        (*args, "--out", cut("forced"), "--resume", "--batch-size", 8, "--force-resume"),
        # other save and log intervals, threads, micro-batches; --init left out
        (*[a for a in args if a not in ("--init", base)], "--out", cut("allowed"), "--resume", "--save-every", 1,
         "--log-every", 2, "--threads", 1, "--micro-tokens", 1024))
    out, p = tmp_path / "forced", forced
    assert "[resume] warning: --force-resume with --batch-size 4 -> 8" in p.stdout
    assert checkpoints.latest_checkpoint(str(out)) == str(out / "step_000004")
    out, p = tmp_path / "allowed", allowed
    assert "warning" not in p.stdout and checkpoints.latest_checkpoint(str(out)) == str(out / "step_000004")


@pytest.mark.parametrize("fname", ["../elsewhere.safetensors", "/tmp/abs.safetensors", "a/../../b.safetensors"])
def test_shard_paths_stay_inside_the_checkpoint(ckpt, fname):
    names = list(load_file(os.path.join(ckpt, "model.safetensors")))
    weight_map = {n: "model.safetensors" for n in names}
    weight_map[names[1]] = fname
    with open(os.path.join(ckpt, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)
    with pytest.raises(CheckpointError, match=f"shard path {re.escape(repr(fname))} \\(holding {names[1]}\\) is not "
                                              f"a relative path inside"):
        Qwen2.from_pretrained(ckpt)
