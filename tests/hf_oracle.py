"""The test oracle: transformers, in a process of its own.

transformers (>= 5) imports Hugging Face's `kernels` package whenever that is installed, and a Python started
in this repository finds the project's own kernels/ folder under that name first (kernels/__init__.py says
so when it happens). So nothing here imports transformers in the tests' process: a test asks this script,
started as

    [sys.executable, "-I", "tests/hf_oracle.py", FOLDER]      with cwd=FOLDER, a temporary folder

-I (isolated mode) keeps the script's folder, the current directory and PYTHONPATH off sys.path, so no module
of this repository can be imported here; the oracle half below imports only the standard library, torch,
transformers and safetensors. Requests and results travel through FOLDER: request.json (the jobs), then
results.json (JSON, with every tensor replaced by a key into tensors.safetensors).

Tests import the client half: `call(task, **kwargs)` for one job, `batch(jobs)` for several in one process.
A process costs seconds (importing torch and transformers), so a test module batches: usually one
module-scoped fixture asks for every model, logits, generation and tokenizer the module compares with.
Both skip the calling test when transformers is not installed (found, never imported, in the test process).

The tasks (a job is a dict: "task" and the task's arguments):
  build             Qwen2ForCausalLM(config) after torch.manual_seed(seed), optionally perturbed, saved; logits
  logits            AutoModelForCausalLM.from_pretrained(path): logits on batches of ids
  generate          greedy generate from a checkpoint, one prompt at a time
  tokenizer         AutoTokenizer.from_pretrained(path): size, special ids, chat template, apply_chat_template ids
  count_parameters  parameters of a Qwen2ForCausalLM(config) on the meta device
  time_forward      bench/bench_model.py's side: an eager forward, timed here (no process start or import in it)
  rollouts          bench/bench_sampler.py's side: multi-turn generate, re-prefilled after each observation, timed
"""
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.abspath(__file__)


# ----------------------------------------------------------------------------- client (the tests' process)

def available():
    """Whether transformers is installed: found, not imported (importing it here is what this file avoids)."""
    return importlib.util.find_spec("transformers") is not None


def call(task, **kwargs):
    """One job in its own oracle process: call("generate", path=..., prompts=...) -> its result."""
    return batch([dict(task=task, **kwargs)])[0]


def batch(jobs, threads=1):
    """Run `jobs` in one oracle process, in order, with `threads` torch threads (1: what the tests' process
    uses, so that a logit computed there and here can be compared bit for bit); their results, in order."""
    if not available():
        import pytest
        pytest.skip("transformers is not installed (pip install -r requirements-dev.txt)")
    from safetensors.torch import load_file
    with tempfile.TemporaryDirectory(prefix="hf_oracle-") as folder:
        with open(os.path.join(folder, "request.json"), "w", encoding="utf-8") as f:
            json.dump({"threads": threads, "jobs": jobs}, f, ensure_ascii=False)
        p = subprocess.run([sys.executable, "-I", HERE, folder], cwd=folder, capture_output=True, text=True)
        if p.returncode != 0:
            raise RuntimeError(f"tests/hf_oracle.py failed (exit {p.returncode}):\n{p.stderr[-6000:]}")
        with open(os.path.join(folder, "results.json"), encoding="utf-8") as f:
            results = json.load(f)
        tensors = load_file(os.path.join(folder, "tensors.safetensors"))
    return unpack(results, tensors)


def unpack(x, tensors):
    """results.json's structure with each {"tensor": key} replaced by the tensor (pack() below is the inverse)."""
    if isinstance(x, dict):
        return tensors[x["tensor"]] if x.keys() == {"tensor"} else {k: unpack(v, tensors) for k, v in x.items()}
    if isinstance(x, list):
        return [unpack(v, tensors) for v in x]
    return x


# ----------------------------------------------------------------------------- oracle (its own process)
# Each task imports what it uses from torch and transformers: none of it loads in the tests' process.

def build(config, out, seed=0, perturb=0.0, dtype="float32", ids=()):
    """A random Qwen2ForCausalLM(Qwen2Config(**config)) with transformers' init after torch.manual_seed(seed),
    then every parameter plus perturb * N(0, 1) (the default init, std 0.02 with zero biases and unit norms,
    hides mistakes); cast to dtype and save_pretrained(out). Its logits on each batch of ids, in dtype."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM
    torch.manual_seed(seed)
    m = Qwen2ForCausalLM(Qwen2Config(**config))
    if perturb:
        with torch.no_grad():
            for p in m.parameters():
                p.add_(torch.randn_like(p) * perturb)
    m = m.to(getattr(torch, dtype)).eval()
    m.save_pretrained(out)
    return {"logits": forward(m, ids)}


def logits(path, ids=(), dtype=None):
    """AutoModelForCausalLM.from_pretrained(path), in dtype if given (else transformers' default): its logits
    on each batch of ids (a list of equal-length rows)."""
    import torch
    from transformers import AutoModelForCausalLM
    kw = {"dtype": getattr(torch, dtype)} if dtype else {}
    return {"logits": forward(AutoModelForCausalLM.from_pretrained(path, **kw).eval(), ids)}


def forward(m, ids):
    import torch
    with torch.no_grad():
        return [m(torch.tensor(x)).logits for x in ids]


def generate(path, prompts, max_new_tokens, eos_token_id, pad_token_id):
    """Greedy generate from the checkpoint at path, one prompt at a time (no padding): each full sequence,
    prompt included, as a list of ids."""
    import torch
    from transformers import AutoModelForCausalLM
    m = AutoModelForCausalLM.from_pretrained(path).eval()
    out = []
    for p in prompts:
        with torch.no_grad():
            seq = m.generate(torch.tensor([p]), do_sample=False, max_new_tokens=max_new_tokens,
                             eos_token_id=eos_token_id, pad_token_id=pad_token_id)
        out.append(seq[0].tolist())
    return out


def tokenizer(path, conversations=None):
    """AutoTokenizer.from_pretrained(path): its size (len), bos/eos/pad ids and chat template, and for each named
    conversation the ids of apply_chat_template(messages, add_generation_prompt=True, tokenize=True). A tokenizer
    without a template renders nothing (transformers refuses), so its "ids" is {} whatever was asked."""
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(path)
    ids = {}
    if tok.chat_template is not None:
        for name, messages in (conversations or {}).items():
            out = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
            ids[name] = list(out["input_ids"] if hasattr(out, "keys") else out)  # a BatchEncoding in transformers 5
    return {"len": len(tok), "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
            "pad_token_id": tok.pad_token_id, "chat_template": tok.chat_template, "ids": ids}


def count_parameters(config):
    """Parameters of Qwen2ForCausalLM(Qwen2Config(**config)), built on the meta device (no memory)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM
    with torch.device("meta"):
        m = Qwen2ForCausalLM(Qwen2Config(**config))
    return sum(p.numel() for p in m.parameters())


def time_forward(path, ids, device, dtype, reps, attn_implementation="eager"):
    """bench/bench_model.py's transformers side: the checkpoint at path on device in dtype, its logits on ids and
    the median wall time of `reps` forwards after a warm-up (the bench times ours the same way)."""
    import statistics

    import torch
    from transformers import AutoModelForCausalLM
    m = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype),
                                             attn_implementation=attn_implementation).to(device).eval()
    x = torch.tensor(ids, device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    with torch.no_grad():
        out = m(x).logits  # also the warm-up
        times = []
        for _ in range(reps):
            sync()
            t = time.perf_counter()
            m(x)
            sync()
            times.append(time.perf_counter() - t)
    return {"logits": out, "seconds": statistics.median(times)}


def rollouts(path, device, dtype, batches, obs_ids, segments, every, reps):
    """bench/bench_sampler.py's transformers side, for each batch of (equal-length) prompts: generate `every`
    tokens, append the observation, generate again from the full sequence (generate re-prefills all of it),
    `segments` times. The best wall time of `reps` runs per batch, as the bench times ours."""
    import torch
    from transformers import AutoModelForCausalLM
    m = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype)).to(device).eval()
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    seconds = []
    for prompts in batches:
        best = float("inf")
        for _ in range(reps):
            sync()
            t = time.perf_counter()
            ids = torch.tensor(prompts, device=device)
            obs = torch.tensor(obs_ids, device=device).expand(len(prompts), -1)
            for j in range(segments):
                with torch.no_grad():
                    out = m.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                     max_new_tokens=every, pad_token_id=0, eos_token_id=None)
                assert out.shape[1] == ids.shape[1] + every
                ids = torch.cat([out, obs], dim=1) if j < segments - 1 else out
            sync()
            best = min(best, time.perf_counter() - t)
        seconds.append(best)
    return seconds


TASKS = {f.__name__: f for f in (build, logits, generate, tokenizer, count_parameters, time_forward, rollouts)}


def pack(x, tensors):
    """x with each tensor moved into `tensors` (written to tensors.safetensors) and replaced by {"tensor": key}."""
    import torch
    if isinstance(x, torch.Tensor):
        key = str(len(tensors))
        tensors[key] = x.detach().cpu().contiguous()
        return {"tensor": key}
    if isinstance(x, dict):
        return {k: pack(v, tensors) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [pack(v, tensors) for v in x]
    return x


def main(folder):
    repo = os.path.dirname(os.path.dirname(HERE))
    assert repo not in map(os.path.abspath, sys.path), f"{repo} is on sys.path: start this with python -I"
    import torch
    from safetensors.torch import save_file
    with open(os.path.join(folder, "request.json"), encoding="utf-8") as f:
        request = json.load(f)
    torch.set_num_threads(request["threads"])
    tensors = {}
    results = [pack(TASKS[job.pop("task")](**job), tensors) for job in request["jobs"]]
    save_file(tensors, os.path.join(folder, "tensors.safetensors"))
    with open(os.path.join(folder, "results.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, ensure_ascii=False)


if __name__ == "__main__":
    main(sys.argv[1])
