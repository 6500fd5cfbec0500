"""Tests for what happens when a training run goes wrong, on the tiny world of tests/conftest.py: a crash
mid-save keeps the last checkpoint, a killed run resumes to the same weights as one never stopped, a
non-finite loss stops the run before it saves, FSDP2 under torchrun matches one process, and a search
server that fails stops the run loudly instead of training on failures.

    python -m pytest -q tests/test_faults.py
"""
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest
import torch

import checkpoints
import common
import env
import eval as eval_script
import grpo
import model as model_mod
import sample
import sft_contrastive
from grpo import group_advantages, loss_sequences
from sample import Rollout
from stage_runs import (ENV, ROOT, TINY, assert_complete_checkpoint, check_grpo_run, free_port, last_per_step,
                        latest_step, main_of, metrics, run_script, run_scripts, tiny_setup, weights)


# ============================================================================= 1. a crash mid-save


def train_one_step(net, opt, args, step):
    ids = torch.randint(0, net.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(step))
    lp, m = common.sequence_logprobs(net, ids, torch.ones_like(ids), "cpu")
    (-lp.sum() / m.sum()).backward()
    common.clip_and_step(net, opt, step, args)


class Crash(Exception):
    pass


def crash_after(fn):
    """fn, but raising Crash after it ran (a death right after that write)."""
    def wrapped(*a, **k):
        fn(*a, **k)
        raise Crash(fn.__name__)
    return wrapped


def crash_before(*a, **k):
    raise Crash("before")


def crash_writing(name, save):
    """torch.save, but dying when it writes the file `name` (torch.distributed.checkpoint also calls it)."""
    def wrapped(obj, f, *a, **k):
        if isinstance(f, str) and os.path.basename(f) == name:
            raise Crash(f"writing {name}")
        return save(obj, f, *a, **k)
    return wrapped


def crash_removing(name, rmtree):
    """shutil.rmtree, but dying when it is asked to remove the directory `name` (and only then)."""
    def wrapped(path, *a, **k):
        if os.path.basename(path) == name:
            raise Crash(f"removing {name}")
        rmtree(path, *a, **k)
    return wrapped


CRASH_POINTS = {  # (object, attribute, replacement): where the save dies
    "model file written": lambda: (model_mod, "save_file", crash_after(model_mod.save_file)),
    "train state (DCP)": lambda: (torch.distributed.checkpoint, "save", crash_before),
    "trainer state": lambda: (torch, "save", crash_writing("trainer_state.pt", torch.save)),
    "step dir rename": lambda: (checkpoints, "replace_dir", crash_before),
    "latest switch": lambda: (os, "replace", crash_before),
    "old checkpoint cleanup": lambda: (shutil, "rmtree", crash_removing("step_000001", shutil.rmtree)),
}


@pytest.mark.parametrize("where", list(CRASH_POINTS))
def test_crash_mid_save_keeps_last_checkpoint(tmp_path, tok, monkeypatch, where):
    out = str(tmp_path)
    run = SimpleNamespace(master=True, distributed=False)
    net, opt, args = tiny_setup(tok)
    args.out = out
    train_one_step(net, opt, args, 0)
    checkpoints.save_checkpoint(run, out, 1, net, tok, opt, args)
    train_one_step(net, opt, args, 1)
    train_one_step(net, opt, args, 2)
    checkpoints.save_checkpoint(run, out, 3, net, tok, opt, args)  # two complete checkpoints now
    good3 = {k: v.clone() for k, v in net.state_dict().items()}
    train_one_step(net, opt, args, 3)
    obj, name, fn = CRASH_POINTS[where]()
    with monkeypatch.context() as mp:
        mp.setattr(obj, name, fn)
        with pytest.raises(Crash):
            checkpoints.save_checkpoint(run, out, 4, net, tok, opt, args)
    # `latest` names a complete, loadable checkpoint: the previous one, or the new one once the switch is done
    path, step = latest_step(out)
    expect_step, expect_w = (4, net.state_dict()) if where == "old checkpoint cleanup" else (3, good3)
    w, state = assert_complete_checkpoint(path, expect_step)
    assert all(torch.equal(w[k], expect_w[k]) for k in w)
    if expect_step == 3:
        assert not os.path.exists(os.path.join(out, "step_000004")) or where == "latest switch"
    # --resume picks that checkpoint; the next save (the resumed run's) works despite the debris
    rargs = SimpleNamespace(resume=True, out=out, init=None)
    rpath, rstate = checkpoints.resume_or_init(SimpleNamespace(print=lambda *a: None), rargs, default_init=None)
    assert rpath == path and rstate["step"] == expect_step
    checkpoints.save_checkpoint(run, out, 4, net, tok, opt, args)
    path, _ = latest_step(out)
    assert_complete_checkpoint(path, 4)
    assert save_debris(out) == []
    # a save of the step `latest` already names goes to step_N_1, never replacing that directory in place
    new = "step_000004_1" if where == "old checkpoint cleanup" else "step_000004"
    assert {d for d in os.listdir(out) if d.startswith("step_")} == {"step_000003", new}


SFT_RESUME = ["--mask-obs", "--batch-size", 2, "--lr", 1e-2, "--warmup", 60, "--max-len", 256, "--steps", 60]


@pytest.fixture(scope="session")
def sft_straight(tmp, world, base):
    """sft_coa for 60 steps in one go: the reference for the killed-and-resumed run and for torchrun.
    (--warmup 60: the lr ramps the whole run, so the schedule is the same for any --steps >= 60.)"""
    out = str(tmp / "sft_straight")
    run_script("sft_coa.py", "--data", world, "--init", base, "--out", out, *SFT_RESUME)
    return out


def save_debris(out):
    """What only exists while a save is under way: temporary step directories, the pointer being written."""
    return sorted(d for d in os.listdir(out) if d != ".lock" and (d.startswith(".") or d.endswith(".old")))


@pytest.mark.slow  # 3 to 5 runs of sft_coa.py killed at random moments, then resumed: ~20 s
def test_sigkill_mid_run_then_resume(tmp, world, base, sft_straight):
    """Save every step and SIGKILL the run: first while a save is half written (seen by its temporary
    directory; tried up to 3 times, should the save finish between seeing it and the kill), then at a random
    moment. `latest` must always name a complete checkpoint, and --resume must finish the run with exactly
    the weights and losses of a run never killed. In the slow set (pytest.ini): in the default one,
    test_crash_mid_save_keeps_last_checkpoint stops a save at each of its steps, and the resume tests
    (test_resume_matches_uninterrupted_pretrain, test_grpo_resume_matches_uninterrupted, tests/test_dcp.py)
    check that a resume is exact."""
    out = str(tmp / "sft_killed")
    rng = random.Random(0)
    cmd = [sys.executable, "sft_coa.py", "--data", world, "--init", base, "--out", out, *map(str, SFT_RESUME),
           "--save-every", "1"]
    kills = []  # (latest step after the kill, debris left by the save it interrupted)
    while True:
        mid_save = len(kills) < 3 and not any(d for _, d in kills)
        target = (kills[-1][0] if kills else 0) + rng.randint(2, 5)
        proc = subprocess.Popen(cmd + (["--resume"] if kills else []), cwd=ROOT, env=ENV,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        t0, armed = time.time(), None
        while proc.poll() is None and time.time() - t0 < 120:
            path = checkpoints.latest_checkpoint(out)
            if armed is None and path and int(os.path.basename(path)[5:]) >= target:
                armed = time.time() + (0 if mid_save else rng.uniform(0, 0.1))
            if armed is not None and time.time() >= armed and (not mid_save or save_debris(out)):
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.0005)
        err = proc.communicate()[1]
        assert proc.returncode == -signal.SIGKILL, f"run ended before it could be killed:\n{err[-2000:]}"
        path, step = latest_step(out)
        assert step >= target
        assert_complete_checkpoint(path, step)  # never a half-written one
        kills.append((step, save_debris(out)))
        if not mid_save:
            break
    assert any(d for _, d in kills), f"no kill landed inside a save: {kills}"
    assert kills[-1][0] < 60
    p = run_script(*cmd[1:], "--resume")
    assert f"[resume] {os.path.join(out, f'step_{kills[-1][0]:06d}')}" in p.stdout
    path, step = latest_step(out)
    assert step == 60
    assert save_debris(out) == []  # the killed saves' temporary directories were cleaned up
    a, b = weights(path), weights(checkpoints.latest_checkpoint(sft_straight))
    assert all(torch.equal(a[k], b[k]) for k in a)
    straight, resumed = last_per_step(metrics(sft_straight)), last_per_step(metrics(out))
    assert sorted(resumed) == list(range(60))
    for s in range(60):
        assert resumed[s]["loss"] == pytest.approx(straight[s]["loss"], rel=1e-6, abs=1e-9), s


# ============================================================================= 2. resume == uninterrupted

@pytest.fixture(scope="session")
def small_world(tmp, world):
    """The world with 40 of base.jsonl's rows: packing them into windows takes a moment, not a minute per run."""
    out = tmp / "world_small_base"
    shutil.copytree(world, out)
    rows = common.read_jsonl(os.path.join(world, "base.jsonl"))
    assert len(rows) > 40
    with open(out / "base.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows[:40])
    return str(out)


def test_resume_matches_uninterrupted_pretrain(tmp, small_world):
    """pretrain from scratch (tokenizer and init included), 8 steps straight vs 4 steps, then --resume to 8.
    --warmup 16 makes the lr independent of the run's length, so the shorter run is the first part of the other."""
    common_args = ["--data", small_world, *TINY, "--batch-size", 4, "--lr", 1e-2, "--warmup", 16, "--save-every", 4]
    full, half = str(tmp / "pre_full"), str(tmp / "pre_half")
    run_scripts(("pretrain.py", "--out", full, "--steps", 8, *common_args),
                ("pretrain.py", "--out", half, "--steps", 4, *common_args))
    assert latest_step(half)[1] == 4
    # a longer run is another --steps: --force-resume (exact here: the lr does not depend on it)
    run_script("pretrain.py", "--out", half, "--steps", 8, "--resume", "--force-resume", *common_args)
    (pf, sf), (ph, sh) = latest_step(full), latest_step(half)
    assert sf == sh == 8
    a, b = weights(pf), weights(ph)
    assert all(torch.allclose(a[k], b[k], rtol=0, atol=1e-6) for k in a)
    with open(os.path.join(pf, "tokenizer.json")) as f, open(os.path.join(ph, "tokenizer.json")) as g:
        assert f.read() == g.read()
    lf, lh = metrics(full), metrics(half)
    assert [r["step"] for r in lh] == list(range(8))
    for rf, rh in zip(lf[4:], lh[4:]):  # the resumed steps
        assert rh["loss"] == pytest.approx(rf["loss"], rel=1e-6)
        assert rh["lr"] == rf["lr"] and rh["grad_norm"] == pytest.approx(rf["grad_norm"], rel=1e-5)
    assert lh[0]["loss"] != lh[7]["loss"]  # it trained


def test_grpo_resume_matches_uninterrupted(tmp, grpo_run, search_server):
    """GRPO cut after step 3 of 6 (its last checkpoint then) and resumed ends with exactly the weights and
    per-step rewards of a run never cut: the prompts, the sampler's dice, the optimizer state, the frozen
    reference and the real-call count all carry over (the cut falls where simulated steps turn real). The run
    never cut is tests/test_stages.py's (grpo_run); the resumed one searches a new server of the same corpus
    (--search may change on a resume: checkpoints.RESUME_MAY_CHANGE)."""
    url, _ = search_server
    full, cut = grpo_run.out, tmp / "rl_cut"
    shutil.copytree(full, cut)
    shutil.rmtree(cut / "step_000006")
    (cut / "latest").write_text("step_000003")
    p = run_script(*grpo_run.args, "--out", cut, "--search", url, "--resume")
    assert f"[resume] {cut / 'step_000003'}" in p.stdout
    a, b = weights(checkpoints.latest_checkpoint(full)), weights(checkpoints.latest_checkpoint(str(cut)))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], weights(grpo_run.init)[k]) for k in a)  # it trained
    steps = lambda out: last_per_step([r for r in metrics(out) if "mode" in r])  # noqa: E731 (not validation rows)
    straight, resumed = steps(full), steps(cut)
    assert sorted(resumed) == list(range(6))
    for s in range(6):
        for k in ("reward", "real_search_calls", "length"):
            assert resumed[s][k] == straight[s][k], (s, k)


# ============================================================================= 3. non-finite loss

def test_check_finite_and_clip_and_step_stop_on_nan(tmp_path, tok):
    out = str(tmp_path)
    with open(os.path.join(out, "latest"), "w") as f:
        f.write("step_000003\n")
    os.makedirs(os.path.join(out, "step_000003"))
    checkpoints.check_finite(1.5, 7, out)
    for bad in (float("nan"), float("inf"), float("-inf")):
        with pytest.raises(FloatingPointError, match=r"at step 7.*Last good checkpoint: .*step_000003"):
            checkpoints.check_finite(bad, 7, out)
    # a NaN gradient stops the step before the optimizer touches the weights
    net, opt, args = tiny_setup(tok)
    args.out = out
    before = {k: v.clone() for k, v in net.state_dict().items()}
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    next(net.parameters()).grad[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="non-finite gradient norm nan at step 5"):
        common.clip_and_step(net, opt, 5, args)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_diverging_run_stops_and_keeps_last_good_checkpoint(tmp, world, sft1, monkeypatch):
    """Resume a copy of the stage-1 run (latest = step 20) with a huge lr: step 20 itself is computed on
    good weights, its update blows them up, and step 21's loss is non-finite. The run must stop with a
    FloatingPointError naming step 21 and step_000020, write nothing after it, and leave step_000020 loadable
    and finite. (sft_contrastive.main() in this process: a run that stops at an error, stage_runs.main_of.)"""
    out = str(tmp / "sft1_diverge")
    shutil.copytree(sft1, out)
    before = weights(checkpoints.latest_checkpoint(out))
    with pytest.raises(FloatingPointError) as stop:
        main_of(sft_contrastive, monkeypatch, "--data", world, "--out", out, "--resume", "--force-resume", "--steps",
                40, "--batch-size", 16, "--lr", 1e30, "--warmup", 0, "--max-len", 768, "--save-every", 100)
    good, msg = os.path.join(out, "step_000020"), str(stop.value)
    assert re.search(r"non-finite (loss|gradient norm) \S+ at step 21;", msg), msg
    assert f"Last good checkpoint: {good}" in msg
    path, step = latest_step(out)
    assert (path, step) == (good, 20)
    w, _ = assert_complete_checkpoint(path, 20)
    assert all(torch.equal(w[k], before[k]) for k in w)
    assert sorted(d for d in os.listdir(out) if d.startswith("step_")) == sorted(
        d for d in os.listdir(sft1) if d.startswith("step_"))
    assert metrics(out)[-1]["step"] == 20  # step 20 logged (finite), step 21 stopped the run


# ============================================================================= 4. FSDP2 under torchrun

def test_torchrun_fsdp2_matches_one_process(tmp, world, base, sft_straight):
    """Two gloo ranks, each block and the model fully_shard-ed, each rank a half of every batch: the same
    loss curve as one process (the losses are global means, the gradients averaged), and the same weights."""
    out = str(tmp / "sft_fsdp")
    run_script("-m", "torch.distributed.run", "--nproc_per_node", 2, "--master-port", free_port(), "sft_coa.py",
               "--data", world, "--init", base, "--out", out, *SFT_RESUME)
    one, two = metrics(sft_straight), metrics(out)
    assert len(one) == len(two) == 60
    for r1, r2 in zip(one, two):
        assert r2["loss"] == pytest.approx(r1["loss"], rel=1e-4), r1["step"]
        assert r2["grad_norm"] == pytest.approx(r1["grad_norm"], rel=1e-3), r1["step"]
    path, step = latest_step(out)
    assert step == 60
    a, _ = assert_complete_checkpoint(path, 60)  # gathered from the shards into one full checkpoint
    b = weights(checkpoints.latest_checkpoint(sft_straight))
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k], b[k], rtol=1e-3, atol=1e-4) for k in a)


def test_torchrun_fsdp2_grpo(tmp, world, sft3, grpo_act, search_server):
    """GRPO on two FSDP2 ranks, each sampling its own prompts: rollouts of different lengths (a different
    number of sampler forwards per rank) must not hang, and the policy update must run (non-zero gradient)."""
    url, spy = search_server
    out = str(tmp / "rl_fsdp")
    init = checkpoints.latest_checkpoint(sft3[0])
    run_script("-m", "torch.distributed.run", "--nproc_per_node", 2, "--master-port", free_port(), grpo_act,
               "--sim-ratio", 1, "--data", world, "--init", init, "--out", out, "--steps", 4, "--batch-size", 4,
               "--group-size", 2, "--max-new-tokens", 48, "--temperature", 1.0, "--save-every", 2,
               "--search", url, "--trainable", r"^model\.norm\.weight$")  # one weight in an FSDP group of frozen ones
    rows = check_grpo_run(out, spy, init, 2, 4)
    assert any(r["grad_norm"] > 0 for r in rows)
    before, after = weights(init), weights(checkpoints.latest_checkpoint(out))
    assert not torch.equal(before["model.norm.weight"], after["model.norm.weight"])
    assert all(torch.equal(before[k], after[k]) for k in before if k != "model.norm.weight")


def test_grpo_trainable_errors(tmp, world, sft3, monkeypatch, capsys):
    """--trainable that is not a regex, or that matches no weight, stops before any rollout and says why
    (argparse's error: exit status 2). A start-up error: grpo.main() in this process."""
    init = checkpoints.latest_checkpoint(sft3[0])
    for pattern, said in (("(", "not a regular expression"), ("^no_such_weight$", "matches no parameter name")):
        with pytest.raises(SystemExit) as stop:
            main_of(grpo, monkeypatch, "--data", world, "--init", init, "--out", tmp / "rl_bad", "--trainable", pattern)
        err = capsys.readouterr().err
        assert stop.value.code == 2 and said in err, err[-2000:]
    assert not os.path.exists(tmp / "rl_bad" / "metrics.jsonl")


UNEVEN_FORWARDS = """import os
import sys
sys.path.insert(0, {root!r})
from types import SimpleNamespace
import torch
import common
run = common.Run(SimpleNamespace(device="cpu", dtype=None, seed=0, threads=None))
model, tok = common.load_model({ckpt!r}, run)
ids = torch.tensor([tok.encode("Reget Nadit is a person.")])
with torch.no_grad(), common.unsharded(model), torch.inference_mode():
    for _ in range(1 + 3 * run.rank):  # a sampler whose rollouts end later on rank 1
        model(ids)
lp, m = common.sequence_logprobs(model, ids, torch.ones_like(ids), run.device)  # then a training step
(-lp.sum()).backward()
torch.optim.SGD(model.parameters(), lr=1e-3).step()
with torch.no_grad():
    after = -common.sequence_logprobs(model, ids, torch.ones_like(ids), run.device)[0].sum().item()
# one write() of one short line: atomic on a pipe, so the two ranks' lines cannot interleave
os.write(1, f"rank {{run.rank}} loss {{round(-lp.sum().item(), 5)}} after {{round(after, 5)}}\\n".encode())
run.close()
"""


def test_unsharded_lets_ranks_run_different_numbers_of_forwards(tmp, base):
    """common.unsharded: inside it, FSDP2 forwards issue no collectives (rank 1 runs 4 forwards, rank 0 one,
    in inference mode, as the sampler does), and training works afterwards. Without it this hangs."""
    script = tmp / "uneven_forwards.py"
    script.write_text(UNEVEN_FORWARDS.format(root=ROOT, ckpt=checkpoints.latest_checkpoint(base)))
    p = run_script("-m", "torch.distributed.run", "--nproc_per_node", 2, "--master-port", free_port(), script,
                   timeout=120)
    found = sorted(re.findall(r"rank (\d) loss (\S+) after (\S+)", p.stdout + p.stderr))
    assert [r for r, _, _ in found] == ["0", "1"], p.stdout
    (_, before0, after0), (_, before1, after1) = found
    assert before0 == before1 and after0 == after1 and float(after0) < float(before0)  # one model, and it learned


# ============================================================================= 5. failed searches are loud

class ScriptedRetrieval(BaseHTTPRequestHandler):
    """POST /retrieve over the world's BM25, except that server.fail(n, queries) (n: the request's number,
    from 0) may name an error status to answer instead. The server logs every request as (status, queries)."""

    def log_message(self, *args):
        pass

    def do_POST(self):
        req, srv = json.loads(self.rfile.read(int(self.headers["Content-Length"]))), self.server
        with srv.lock:
            status = srv.fail(len(srv.log), req["queries"]) or 200
            srv.log.append((status, req["queries"]))
        body = {"error": "scripted failure"} if status != 200 else {"result": [
            [{"document": {"id": h["id"], "contents": h["contents"]}, "score": h["score"]} for h in hits]
            for hits in srv.bm25.search(req["queries"], req["topk"])]}
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def scripted(world):
    """scripted(fail) -> (url, log): a live retrieval server that fails the requests `fail` says."""
    servers = []

    def make(fail):
        srv = ThreadingHTTPServer(("127.0.0.1", 0), ScriptedRetrieval)
        srv.bm25, srv.fail, srv.log, srv.lock = env.BM25Search.from_jsonl(os.path.join(world, "corpus.jsonl")), \
            fail, [], threading.Lock()
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return f"http://127.0.0.1:{srv.server_address[1]}/retrieve", srv.log
    yield make
    for srv in servers:
        srv.shutdown()
        srv.server_close()


def test_group_advantages_leave_out_rollouts_that_saw_a_failed_search():
    r = torch.tensor([1.0, 0.0, 0.0, 5.0, 1.0, 1.0, 0.0, 0.0])
    keep = torch.tensor([True, True, True, False, True, False, False, False])
    # group 1, kept rewards 1, 0, 0: mean 1/3, unbiased std sqrt(((2/3)^2 + 2 (1/3)^2) / 2) = sqrt(1/3); the
    # left-out 5.0 moves neither. Group 2 keeps one rollout: nothing to compare it with, so 0.
    s = (1 / 3) ** 0.5
    torch.testing.assert_close(group_advantages(r, 4, keep), torch.tensor([2 / 3 / s, -1 / 3 / s, -1 / 3 / s, 0,
                                                                           0, 0, 0, 0]), rtol=0, atol=1e-5)
    torch.testing.assert_close(group_advantages(r, 4, torch.ones(8, dtype=torch.bool)), group_advantages(r, 4))


def test_runs_refuse_to_start_on_a_dead_search_server(tmp, world, sft3, scripted, monkeypatch):
    """A server that answers 500: eval, GRPO and the sampler's CLI each stop at their start-up check, saying
    which server and why, before any work (only the check's 3 attempts reach the server)."""
    url, log = scripted(lambda n, queries: 500)
    init = checkpoints.latest_checkpoint(sft3[0])
    said = f"search server {url} failed its start-up check: HTTPStatusError: HTTP 500"
    runs = [(eval_script, "--ckpt", init, "--data", world, "--policy", "rag", "--search", url, "--limit", 2,
             "--out", tmp / "eval_dead" / "x.jsonl"),
            (grpo, "--data", world, "--init", init, "--out", tmp / "rl_dead", "--search", url),
            (sample, "--ckpt", init, "--prompt", "Who is Reget Nadit?", "--search-url", url)]
    for module, *args in runs:
        with pytest.raises(env.SearchError, match=re.escape(said)):
            main_of(module, monkeypatch, *args)
    assert len(log) == 3 * len(runs)
    assert not os.path.exists(tmp / "eval_dead" / "x.jsonl") and not os.path.exists(tmp / "rl_dead" / "metrics.jsonl")


def test_eval_stops_when_a_batch_of_searches_fails(tmp, world, sft3, scripted, monkeypatch):
    """The check passes, then the server answers 500: the first batch's searches all fail, and eval stops
    with the count, the limit and the last error instead of scoring "Retrieval failed." as answers."""
    url, log = scripted(lambda n, queries: 500 if n > 0 else None)
    out = tmp / "eval_failing" / "x.jsonl"
    with pytest.raises(env.SearchError, match=re.escape(
            "[eval rag] questions 1-4: 4 of 4 searches failed, more than --max-search-failures 0.1; last error: "
            "HTTPStatusError: HTTP 500")):
        main_of(eval_script, monkeypatch, "--ckpt", checkpoints.latest_checkpoint(sft3[0]), "--data", world,
                "--policy", "rag", "--search", url, "--limit", 4, "--batch-size", 4, "--out", out)
    assert [s for s, _ in log] == [200, 500, 500, 500] and not os.path.exists(out)  # one call, 3 attempts


def test_grpo_stops_when_a_step_of_searches_fails(tmp, world, sft3, scripted, monkeypatch):
    url, log = scripted(lambda n, queries: 500 if n > 0 else None)
    out = tmp / "rl_failing"
    with pytest.raises(env.SearchError) as stop:
        main_of(grpo, monkeypatch, "--sim-ratio", 0, "--data", world, "--init", checkpoints.latest_checkpoint(sft3[0]),
                "--out", out, "--steps", 3, "--batch-size", 4, "--group-size", 4, "--max-new-tokens", 48,
                "--val-prompts", 0, "--search", url)
    # the first step in which the sampled rollouts searched at all stops the run (which step that is depends
    # on what the tiny model samples)
    found = re.search(r"\[grpo\] step (\d+): (\d+) of (\d+) searches failed, more than --max-search-failures 0\.1; "
                      r"last error: HTTPStatusError: HTTP 500", str(stop.value))
    assert found and found[2] == found[3], str(stop.value)
    assert int(found[2]) == sum(len(q) for s, q in log if s == 500) // 3  # each failed call: 3 attempts
    assert checkpoints.latest_checkpoint(out) is None  # stopped before the update: nothing trained on the failures


def test_loss_sequences_zero_the_mask_of_rollouts_that_saw_a_failed_search():
    ok = Rollout(0, [1, 2], completion=[3, 4, 5], policy_mask=[1, 0, 1], n_tool_calls=1)
    failed = Rollout(1, [1, 2], completion=[6, 7, 8], policy_mask=[1, 0, 1], n_tool_calls=2, n_failed_calls=1)
    assert loss_sequences([ok, failed]) == [([1, 2, 3, 4, 5], [0, 0, 1, 0, 1]), ([1, 2, 6, 7, 8], [0, 0, 0, 0, 0])]


def test_grpo_leaves_rollouts_with_failed_searches_out_of_the_loss(tmp, world, sft3, grpo_act, scripted):
    """Every search after the start-up check is refused (a 422: not retried) and the limit is off: the run
    goes on, counts each refused query as failed, and leaves the rollouts that saw one out of the loss."""
    url, log = scripted(lambda n, queries: 422 if n > 0 else None)
    out, init = str(tmp / "rl_some_failing"), checkpoints.latest_checkpoint(sft3[0])
    run_script(grpo_act, "--sim-ratio", 0, "--data", world, "--init", init, "--out", out, "--steps", 3,
               "--batch-size", 4, "--group-size", 4, "--max-new-tokens", 48, "--val-prompts", 0, "--search", url,
               "--max-search-failures", 1.0, "--save-every", 3)
    rows = metrics(out)
    refused = sum(len(q) for s, q in log if s == 422)
    assert refused > 0 and rows[-1]["failed_search_calls"] == rows[-1]["real_search_calls"] == refused, log
    failed = [b["failed_search_calls"] - a for a, b in zip([0] + [r["failed_search_calls"] for r in rows], rows)]
    assert all((f > 0) == (r["excluded_rollouts"] > 0) and r["excluded_rollouts"] <= f for f, r in zip(failed, rows))
    _, state = assert_complete_checkpoint(checkpoints.latest_checkpoint(out), 3)
    assert state["extra"]["failed_search_calls"] == refused
