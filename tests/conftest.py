"""Shared test set-up: the repo root on sys.path, Triton kernels run by the CPU interpreter, small threads;
and the stage scripts' tiny world and checkpoints, built once per session (below)."""
import os
import sys

os.environ.setdefault("TRITON_INTERPRET", "1")  # before anything imports triton
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

torch.set_num_threads(1)  # tiny ops: a second thread only adds OpenMP spin when cores are shared


# ----------------------------------------------------------------------------- the stage scripts' tiny world
# Built once per session and shared by the tests that run the stage scripts: a world of ~35 pages and a
# ~40k-parameter base model, then each SFT stage and a GRPO run on top (tests/stage_runs.py runs the scripts;
# the chain fixture starts them early, on the second core).
import contextlib  # noqa: E402
import threading  # noqa: E402
from concurrent.futures import Future  # noqa: E402
from types import SimpleNamespace  # noqa: E402

import pytest  # noqa: E402

import checkpoints  # noqa: E402
import env  # noqa: E402
import hf_oracle  # noqa: E402
from data.build import build  # noqa: E402
from qwen_standin import standin_job, tokenizer_dir  # noqa: E402
from stage_runs import GRPO_ACT_REWARD, ROOT, TINY, CountingSearch, run_script  # noqa: E402
from tokenizer import Tokenizer  # noqa: E402


@pytest.fixture(scope="session")
def tmp(tmp_path_factory):
    return tmp_path_factory.mktemp("stages")


@pytest.fixture(scope="session")
def world(tmp):
    out = str(tmp / "world")
    build(out, seed=0, sizes={"person": 12, "org": 6, "city": 6, "country": 3, "book": 4},
          n_test=10, n_dev=10, n_rl=10, n_tool=20, n_cot=4, n_pairs=16, n_recall=20, n_reading=10, page_repeats=2)
    return out


# The chain of script runs on top of the world: each of these runs one script and returns what its fixture gives.

def make_base(tmp, world, made):
    out = str(tmp / "base")
    run_script("pretrain.py", "--data", world, "--out", out, *TINY, "--steps", 30,
               "--batch-size", 8, "--lr", 1e-2, "--warmup", 0, "--save-every", 100)
    return out


def make_sft1(tmp, world, made):
    out = str(tmp / "sft1")
    # the whole set (16 pairs) every step, so the logged loss is one objective going down, not batch noise
    run_script("sft_contrastive.py", "--data", world, "--init", made["base"], "--out", out, "--steps", 20,
               "--batch-size", 16, "--lr", 1e-2, "--warmup", 0, "--max-len", 1024)  # a prefix holds observations
    return out


def make_sft2(tmp, world, made):
    out = str(tmp / "sft2")
    p = run_script("sft_coa.py", "--mask-obs", "--data", world, "--init", made["sft1"], "--out", out, "--steps", 40,
                   "--batch-size", 24, "--lr", 1e-2, "--warmup", 5, "--max-len", 256)
    return out, p.stdout


def make_sft3(tmp, world, made):
    out = str(tmp / "sft3")
    p = run_script("sft_coa.py", "--data", world, "--init", made["sft2"][0], "--out", out, "--steps", 20,
                   "--batch-size", 24, "--lr", 5e-3, "--warmup", 0, "--max-len", 256)
    return out, p.stdout


def make_grpo_run(tmp, world, made):
    """GRPO from stage 3, --sim-ratio 1 over 6 steps: 3 simulated, then 3 real against a live retrieval server that
    counts what it receives (closed after the run), saving at step 3 (the end of RL-1) and step 6. One run for
    tests/test_stages.py, which checks it, and tests/test_faults.py, which resumes it from step 3.
    -> out, init, spy (the server's CountingSearch), args (all but --out and --search)."""
    grpo_act = tmp / "grpo_run_act_reward.py"  # (the grpo_act fixture's file may be written meanwhile)
    grpo_act.write_text(GRPO_ACT_REWARD.format(root=ROOT, script="grpo.py"))
    init = checkpoints.latest_checkpoint(made["sft3"][0])
    args = [grpo_act, "--sim-ratio", 1, "--data", world, "--init", init, "--steps", 6, "--batch-size", 4,
            "--group-size", 4, "--max-new-tokens", 48, "--temperature", 1.0, "--lr", 3e-3, "--save-every", 3,
            "--trainable", "."]  # every weight
    out = str(tmp / "rl")
    with serving(world) as (url, spy):
        run_script(*args, "--out", out, "--search", url)
    return SimpleNamespace(out=out, init=init, spy=spy, args=args)


CHAIN = {"base": make_base, "sft1": make_sft1, "sft2": make_sft2, "sft3": make_sft3, "grpo_run": make_grpo_run}


@pytest.fixture(scope="session")
def chain(request, tmp, world):
    """The runs of CHAIN, in order, on a thread of their own: {name: Future of its fixture's value}. pytest runs one
    test at a time, and these runs (~40 s) are mostly needed late in the session (tests/test_faults.py and
    tests/test_stages.py), so the first test that needs one starts every one the session's tests need; their
    processes then use the second core while this process goes on. A failed run fails every fixture from it on."""
    needed = {name for item in request.session.items for name in item.fixturenames}
    names = list(CHAIN)[:1 + max((i for i, name in enumerate(CHAIN) if name in needed), default=0)]
    futures, stop = {name: Future() for name in names}, threading.Event()

    def run():
        made = {}
        for i, name in enumerate(names):
            try:
                if stop.is_set():
                    raise RuntimeError("the session ended first")
                made[name] = CHAIN[name](tmp, world, made)
            except BaseException as e:  # (pytest.fail's exception is not an Exception)
                for later in names[i:]:
                    futures[later].set_exception(e)
                return
            futures[name].set_result(made[name])
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    yield futures
    stop.set()  # no new run after the session; the one under way ends
    thread.join()


@pytest.fixture(scope="session")
def base(chain):
    return chain["base"].result()


@pytest.fixture(scope="session")
def sft1(chain):
    return chain["sft1"].result()


@pytest.fixture(scope="session")
def sft2(chain):
    return chain["sft2"].result()


@pytest.fixture(scope="session")
def sft3(chain):
    return chain["sft3"].result()


@pytest.fixture(scope="session")
def grpo_run(chain):
    return chain["grpo_run"].result()


@pytest.fixture(scope="session")
def tok(base):
    return Tokenizer.from_pretrained(checkpoints.latest_checkpoint(base))


@contextlib.contextmanager
def serving(world):
    """A live retrieval server over the world's corpus that counts what it is sent: (url, CountingSearch)."""
    spy = CountingSearch(os.path.join(world, "corpus.jsonl"))
    srv = env.RetrievalServer(spy)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield srv.url, spy
    finally:
        srv.shutdown()
        srv.server_close()


@pytest.fixture
def search_server(world):
    with serving(world) as server:
        yield server


# ----------------------------------------------------------------------------- transformers, once per session
# tests/hf_oracle.py runs transformers in a process of its own, which takes seconds to start. So a test module that
# compares with it defines oracle_jobs(folder): it writes into folder whatever transformers is to read and returns
# {name: job}; the oracle fixture runs the jobs of every module of the session's tests in one process.

@pytest.fixture(scope="session")
def oracle(request, tmp_path_factory):
    """{module name: {name: (job, result)}}, for the oracle_jobs of each module a selected test is in; and under
    "standins" the builds of the standins fixture below, if a selected test uses it."""
    items = request.session.items
    modules = sorted({item.module for item in items if hasattr(item.module, "oracle_jobs")}, key=lambda m: m.__name__)
    jobs = [(m.__name__, name, job) for m in modules
            for name, job in m.oracle_jobs(tmp_path_factory.mktemp(m.__name__)).items()]
    if any("standins" in item.fixturenames for item in items):
        jobs += [("standins", f, standin_job(tmp_path_factory.mktemp(f), f)) for f in ("r1", "chatml")]
    results = hf_oracle.batch([job for _, _, job in jobs])
    out = {}
    for (module, name, job), result in zip(jobs, results):
        out.setdefault(module, {})[name] = job, result
    return out


@pytest.fixture(scope="session")
def standins(oracle):
    """The R1-Distill and ChatML stand-ins of tests/qwen_standin.py (the real Qwen vocabulary, a tiny random model),
    built by transformers (the oracle fixture), then given their tokenizer files: tests/test_real_path.py and
    tests/test_real_docs.py."""
    return {f: tokenizer_dir(job["out"], f) for f, (job, _) in oracle["standins"].items()}


@pytest.fixture(scope="session")
def grpo_act(tmp):
    path = tmp / "grpo_act_reward.py"
    path.write_text(GRPO_ACT_REWARD.format(root=ROOT, script="grpo.py"))
    return str(path)
