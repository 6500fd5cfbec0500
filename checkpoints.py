"""Checkpoints that are written atomically and resume exactly, and the stop that keeps the last good one.

Layout of a stage's `--out DIR`:
    DIR/step_000100/          Hugging Face layout (config.json, model.safetensors, tokenizer.json), the
                              weights in config.json's torch_dtype (bf16 for R1-Distill), for eval and export
                              + train_state/ (torch.distributed.checkpoint: the fp32 master weights and the
                              optimizer state, one file per rank; it loads on any number of ranks)
                              + trainer_state.pt (step, RNG, the stage's extras) + args.json
    DIR/latest                the name of the newest complete step directory, replaced atomically
    DIR/metrics.jsonl         one JSON object per logged step (common.Metrics; a resumed run first drops the
                              steps it redoes)
    DIR/.lock                 flock'ed by the run writing DIR (rank 0), and its PID; free once it exits
A step directory is written under a temporary name and renamed when complete, and `latest` is only
switched afterwards, so a crash at any moment leaves the previous checkpoint intact and resumable
(the next save removes what a killed one left half-written); the directory `latest` names is never
replaced in place. Weights are checked finite after every optimizer step (common.clip_and_step) and
before every save, and a NaN/Inf loss or gradient stops the run naming the last checkpoint whose weights
gave a finite loss. A new run refuses an --out that holds another run's checkpoints unless given --resume
or --overwrite, and any run refuses an --out that a running one holds (DIR/.lock, see claim_out).
"""
import fcntl
import json
import math
import os
import random
import re
import shutil
import sys
import warnings

import torch
import torch.distributed as dist

from model import Qwen2, first_nonfinite, replace_dir

# torch.distributed.checkpoint on one process (no process group) is intended here: say nothing about it
warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")


# -----------------------------------------------------------------------------
# where checkpoints are, and starting a run from one

def step_of(name):
    """The step of a checkpoint directory's name: step_000100 -> 100, and step_000100_1 (a re-save of the
    step `latest` named, see save_checkpoint) -> 100; None for any other name."""
    m = re.fullmatch(r"step_(\d+)(_1)?", name)
    return int(m[1]) if m else None


def point_latest(out, name):
    """Switch out/latest to `name` atomically (write a temporary file, then rename it over the pointer)."""
    tmp = os.path.join(out, ".latest.tmp")
    with open(tmp, "w") as f:
        f.write(name + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(out, "latest"))


def latest_checkpoint(out):
    """Path of the newest complete checkpoint in `out`, or None."""
    ptr = os.path.join(out, "latest")
    if not os.path.isfile(ptr):
        return None
    with open(ptr) as f:
        name = f.read().strip()
    path = os.path.join(out, name)
    return path if os.path.isdir(path) else None


def export_dtype(config):
    """The dtype a checkpoint's weights are exported in: config.json's torch_dtype, i.e. the one the model
    came in (bf16 for R1-Distill), whatever the masters' dtype; fp32 for a config that names none."""
    name = config.extra.get("torch_dtype") or config.extra.get("dtype")
    return getattr(torch, name) if name else torch.float32


def exported_state(run, model):
    """{name: CPU tensor in export_dtype} on rank 0, {} on the others, gathered one tensor at a time: under
    FSDP2 no device holds more than one full tensor beyond its shards, and rank 0's host holds the export
    (2 bytes per weight in bf16), never the full fp32 state."""
    dtype, state = export_dtype(model.config), {}
    for name, t in model.state_dict().items():
        t = t.full_tensor() if hasattr(t, "full_tensor") else t  # an all-gather: every rank, in the same order
        if run.master:
            state[name] = t.detach().to(device="cpu", dtype=dtype)
    return state


def train_state(model, opt):
    """The state a resume needs, as torch.distributed.checkpoint reads and writes it: the fp32 master weights
    and the optimizer state keyed by parameter name, each rank's own shards (DTensors) under FSDP2, plain
    tensors on one process. An optimizer that has not stepped yet gets its state initialised (zeros), so that
    a load has a place for every moment."""
    from torch.distributed.checkpoint.state_dict import get_state_dict
    msd, osd = get_state_dict(model, opt)
    return {"model": msd, "optimizer": osd}


SAVED = set()  # (abspath of an --out, step) of every checkpoint this process wrote: stop() takes back only those


def save_checkpoint(run, out, step, model, tok, opt, args, extra=None, keep=2):
    """Write out/step_{step} atomically, then point `latest` at it: the HF-layout export (exported_state),
    train_state/ (torch.distributed.checkpoint: every rank writes its own shards of the fp32 masters and of
    the optimizer state, which nobody gathers), trainer_state.pt (step, RNG, extras) and args.json.
    Non-finite weights are never saved. The directory `latest` names is never replaced in place (its
    replacement would leave `latest` dangling for a moment): a re-save of that step (GRPO's RL-1 checkpoint
    after a resume) goes to step_{step}_1, or back, and the old one is removed after the switch."""
    import torch.distributed.checkpoint as dcp
    bad = first_nonfinite(model.named_parameters())  # this rank's shards
    if run.distributed:  # every rank stops together, or the others would wait in the next collective
        flag = torch.tensor(float(bad is not None), device=run.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        bad = bad or ("a weight on another rank" if flag.item() else None)
    if bad is not None:
        stop(f"non-finite weight {bad} at the save of step {step}", step, out)
    SAVED.add((os.path.abspath(out), step))
    name = f"step_{step:06d}"
    live = latest_checkpoint(out)  # every rank reads the same pointer: only the end of this save changes it
    if live and os.path.basename(live) == name:
        name += "_1"
    tmp = os.path.join(out, f".tmp-{name}")
    if run.master:
        os.makedirs(out, exist_ok=True)
        for d in os.listdir(out):  # left by a save killed half-way (never pointed to; a model's size each)
            if d.startswith(".tmp-"):
                shutil.rmtree(os.path.join(out, d), ignore_errors=True)
    state = exported_state(run, model)  # collective under FSDP: all ranks
    if run.master:
        save_state_dict_pretrained(model.config, state, tmp)
    del state
    if run.distributed:
        dist.barrier()  # tmp exists before any rank writes into it
    dcp.save(train_state(model, opt), checkpoint_id=os.path.join(tmp, "train_state"), no_dist=not run.distributed)
    if run.master:
        tok.save(os.path.join(tmp, "tokenizer.json"))
        torch.save({"step": step, "torch_rng": torch.get_rng_state(), "python_rng": random.getstate(),
                    "extra": extra or {}}, os.path.join(tmp, "trainer_state.pt"))
        with open(os.path.join(tmp, "args.json"), "w") as f:
            json.dump(vars(args), f, indent=2)
        replace_dir(tmp, os.path.join(out, name))  # `latest` does not name `name`: no reader can miss it
        point_latest(out, name)  # the atomic switch
        # Removed now: debris of a killed replace_dir, the superseded copy of this step, and all but the
        # newest keep - 1 earlier checkpoints. Later steps (a run resumed from an earlier `latest`) are left.
        others = [d for d in os.listdir(out) if d.startswith("step_") and d != name]
        earlier = sorted((step_of(d), d) for d in others if step_of(d) is not None and step_of(d) < step)
        remove = [d for d in others if step_of(d) in (None, step)] + [d for _, d in earlier[:max(0, len(earlier) - (keep - 1))]]
        for d in remove:
            shutil.rmtree(os.path.join(out, d), ignore_errors=True)
    if run.distributed:
        dist.barrier()


def save_state_dict_pretrained(config, state, path):
    """HF-layout save of a plain state dict (no module needed), via a meta-device model's save_pretrained."""
    with torch.device("meta"):
        shell = Qwen2(config)
    shell.load_state_dict(state, strict=True, assign=True)
    if config.tie_word_embeddings:
        shell.lm_head.weight = shell.model.embed_tokens.weight
    shell.save_pretrained(path)


def resolve_checkpoint(path):
    """A checkpoint directory itself (has config.json), or a stage's --out (its `latest`), or None."""
    if os.path.isfile(os.path.join(path, "config.json")):
        return path
    return latest_checkpoint(path)


def have(path):
    """Whether a pipeline output exists: the world's files, or a complete checkpoint."""
    return bool(os.path.isfile(os.path.join(path, "meta.json")) if path.endswith("world") else resolve_checkpoint(path))


# The embedded world's default outputs (pipeline.DEFAULT_CHAIN), relative to the repository: what the stages
# start from, and read, when given no --init and no --data. Only these are built when missing (ensure).
ROOT = os.path.dirname(os.path.abspath(__file__))
WORLD = "runs/world"
DEFAULT_OUTPUTS = (WORLD, "runs/base", "runs/sft1", "runs/sft2", "runs/sft3")


def default_path(name):
    """A default output as a path from the working directory: `runs/world` when run from the repository, as the
    docs write it, and the same directory of the repository from anywhere else."""
    return os.path.relpath(os.path.join(ROOT, name))


def default_output(path):
    """Which of DEFAULT_OUTPUTS `path` is (the same directory of this repository), or None. What a path IS
    decides it, not how it is written: `runs/hotpotqa` or a `runs/...` of another folder is none of them."""
    return next((name for name in DEFAULT_OUTPUTS if os.path.abspath(path) == os.path.join(ROOT, name)), None)


def is_world(data):
    """Whether --data is the embedded world: its default runs/world (built when missing), or any directory
    holding the world's world.json (data/build.py)."""
    return default_output(data) == WORLD or os.path.isfile(os.path.join(data, "world.json"))


def init_needed(data):
    """The error of a stage given --data other than the default world and no --init to start from."""
    what = "is not the embedded world's runs/world" if is_world(data) else "is not the embedded world"
    return (f"--data {data} {what}: pass --init with the checkpoint to start from (the embedded world's "
            f"{', '.join(DEFAULT_OUTPUTS[1:])} are only the defaults on {WORLD})")


def ensure(path, run):
    """Make a missing default output of the embedded world (DEFAULT_OUTPUTS: the world, or a stage's checkpoint),
    so that any stage runs on a fresh clone: pipeline.py, which holds the graph of stages, builds it and what
    it needs. Any other path (a user's --data or --init, relative or absolute) is left alone: the stage then
    names what is missing (common.read_jsonl, resume_or_init)."""
    name = default_output(path)
    if name is None or have(path):
        return
    cmd = [sys.executable, "pipeline.py", "--build", name]
    if run.distributed:
        raise FileNotFoundError(f"{path} is missing: run `{' '.join(cmd[1:])}` first")
    run.print(f"[prerequisite] {path} is missing; running: {' '.join(cmd[1:])}")
    import subprocess
    subprocess.run(cmd, check=True, cwd=ROOT)


# "Resumes exactly" holds only for the arguments the checkpoint was saved with (its args.json). These flags
# may change on --resume, since they change nothing that is computed: when it is saved or logged, where it
# runs (devices; the number of ranks is no flag either), how one batch is split into micro-batches (the same
# gradient, up to float summation order), when GRPO validates, when a failing tool stops the run, and the
# address of the search server (a server restarted elsewhere; that it serves the same corpus is yours to keep).
# Any other change is refused unless --force-resume. --steps is not among them: it is the length of the cosine
# schedule (common.lr_at) and, in grpo.py, where the simulated steps end, so a longer run changes the lr of
# every step after the warm-up. Extending a run is a fair wish, but it is another run: --force-resume.
RESUME_MAY_CHANGE = {"out", "resume", "overwrite", "force_resume", "save_every", "log_every", "threads", "device",
                     "grad_checkpointing", "micro_tokens", "val_every", "max_search_failures", "search"}
# Flags a resume may leave out: the checkpoint holds what they gave (the weights; GRPO's reference model).
RESUME_MAY_OMIT = {"init"}


def check_resume_args(args, path):
    """Refuse (SystemExit, every changed flag as old -> new) to resume from checkpoint `path` with arguments
    that differ from its args.json in a flag outside RESUME_MAY_CHANGE; with --force-resume, warn and go on.
    A flag that only one side has (added or removed since) cannot be compared and is passed over."""
    file = os.path.join(path, "args.json")
    if not os.path.isfile(file) and getattr(args, "force_resume", False):
        return
    if not os.path.isfile(file):
        raise FileNotFoundError(f"--resume: {file} is missing, so nothing says the run was started with these "
                                "arguments; --force-resume resumes without the check")
    with open(file) as f:
        saved = json.load(f)
    now = json.loads(json.dumps(vars(args)))  # as args.json holds them: tuples become lists
    changed = [k for k in sorted(saved.keys() & now.keys()) if saved[k] != now[k] and k not in RESUME_MAY_CHANGE
               and not (k in RESUME_MAY_OMIT and None in (saved[k], now[k]))]
    if not changed:
        return
    show = lambda v: v if isinstance(v, str) else json.dumps(v)  # noqa: E731
    diff = ", ".join(f"--{k.replace('_', '-')} {show(saved[k])} -> {show(now[k])}" for k in changed)
    if not getattr(args, "force_resume", False):
        raise SystemExit(f"--resume: {diff} (against {file}): a run resumes exactly only with the arguments it was "
                         "saved with; pass those, or --force-resume to go on anyway (exactness is lost)")
    if not dist.is_initialized() or dist.get_rank() == 0:
        print(f"[resume] warning: --force-resume with {diff}: this run no longer resumes exactly", flush=True)


def resume_or_init(run, args, default_init):
    """Pick where the weights come from: --resume (latest checkpoint of --out), --init, or the default
    `default_init` (one of DEFAULT_OUTPUTS, made by its stage if missing), which only a run on the default
    world (runs/world) has. Returns (checkpoint path, trainer_state or None)."""
    if args.resume:
        path = latest_checkpoint(args.out)
        if path is None:
            raise FileNotFoundError(f"--resume: no complete checkpoint in {args.out} (no 'latest' pointer)")
        if not os.path.isdir(os.path.join(path, "train_state")):
            raise FileNotFoundError(f"--resume: {path} has no train_state/ (the fp32 weights and optimizer state; "
                                    f"an older checkpoint layout): start a new run from it with --init {path}")
        state = torch.load(os.path.join(path, "trainer_state.pt"), map_location="cpu", weights_only=False)
        state["path"] = path  # restore() reads train_state/ from here
        state["args"] = args  # restore() compares them with the saved ones, as the stage has them by then
        run.print(f"[resume] {path} at step {state['step']}")
        return path, state
    if args.init is None and default_init is not None:
        if default_output(args.data) != WORLD:  # the default chain is the embedded world's: never built for other data
            raise SystemExit(init_needed(args.data))
        default_init = default_path(default_init)
        ensure(default_init, run)
    path = resolve_checkpoint(args.init or default_init)
    if path is None:
        raise FileNotFoundError(f"--init {args.init or default_init}: no checkpoint there (config.json or 'latest')")
    return path, None


LOCKS = {}  # abspath of an --out -> the open file whose flock this process holds on it, until it exits


def lock_out(out):
    """Take the exclusive lock on `out` (an flock on out/.lock, which holds the holder's PID) for the life of
    this process, or return why not. The OS drops an flock when its process dies, however it dies, so a
    killed run never leaves a stale lock behind; a run that calls this again (tests run main() in-process
    several times) keeps the lock it holds."""
    out = os.path.abspath(out)
    if out in LOCKS:
        return None
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, ".lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode("ascii", "replace").strip()
        os.close(fd)
        return f"pid {holder}" if holder.isdigit() else "another process"
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    LOCKS[out] = fd
    return None


def claim_out(run, args):
    """Call first thing: a run never writes into another run's --out by accident. Two runs never share an
    --out at once: rank 0 holds an exclusive lock on it for the whole run (lock_out), and a second run is
    refused while the first lives (one's save would delete the other's temporary step directory, and
    metrics.jsonl would interleave both). An --out that holds checkpoints (a `latest` or step directories)
    is continued with --resume, or started over with --overwrite, which first deletes them, metrics.jsonl
    and nested runs (GRPO's rl1); otherwise refused."""
    holder = lock_out(args.out) if run.master else None  # under torchrun the ranks share rank 0's --out
    if run.distributed and run.all_max(float(holder is not None)) and holder is None:
        holder = "another process (rank 0 could not lock it)"  # every rank stops, not only rank 0
    if holder:
        raise SystemExit(f"--out {args.out} is in use by another run ({holder} holds "
                         f"{os.path.join(args.out, '.lock')}): wait for it to end, or pass another --out")
    if args.resume:
        if args.overwrite:
            raise SystemExit("--resume continues the run in --out and --overwrite deletes it: pass one of them")
        return
    held = sorted(d for d in os.listdir(args.out) if d == "latest" or d.startswith("step_")) \
        if os.path.isdir(args.out) else []
    if not held:
        return
    if not args.overwrite:
        raise SystemExit(f"--out {args.out} already holds a run ({', '.join(held[:3])}{' ...' if len(held) > 3 else ''})"
                         f": pass --resume to continue it, or --overwrite to delete it and start over")
    init = os.path.abspath(resolve_checkpoint(args.init) or args.init) if args.init else ""
    if init.startswith(os.path.abspath(args.out) + os.sep):
        raise SystemExit(f"--init {args.init} lies inside --out {args.out}, which --overwrite would delete")
    if run.master:
        for d in os.listdir(args.out):
            p = os.path.join(args.out, d)
            if os.path.isdir(p) and (d.startswith(("step_", ".tmp-")) or os.path.isfile(os.path.join(p, "latest"))):
                shutil.rmtree(p)
            elif d in ("latest", ".latest.tmp", "metrics.jsonl"):
                os.remove(p)
        run.print(f"[out] --overwrite: deleted the run that was in {args.out}")
    if run.distributed:
        dist.barrier()


def restore(model, opt, state):
    """Check that the run resumes with the arguments it was saved with (check_resume_args), then load the fp32
    master weights and the optimizer state from the checkpoint's train_state/, then the RNG state. Each rank
    reads the parts of the tensors it holds, whatever number of ranks wrote them; the weights the model was
    loaded with (the export, bf16 for a bf16 model) are replaced by the masters, so a resumed
    run continues exactly."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_state_dict
    if "args" in state:  # here, not at resume_or_init: a stage may settle a flag after loading
        check_resume_args(state["args"], state["path"])
    sd = train_state(model, opt)  # this run's layout: its shards, its parameter names
    dcp.load(sd, checkpoint_id=os.path.join(state["path"], "train_state"), no_dist=not dist.is_initialized())
    set_state_dict(model, opt, model_state_dict=sd["model"], optim_state_dict=sd["optimizer"])
    torch.set_rng_state(state["torch_rng"])
    random.setstate(state["python_rng"])
    return state["step"]


# -----------------------------------------------------------------------------
# a non-finite loss or weight stops the run

def check_finite(value, step, out, what="loss", detail=None):
    """A NaN or Inf loss (or gradient) at `step` stops the run. The weights it was computed with are those
    of checkpoint `step` (saved after `step` updates), so that checkpoint is not a good one to resume from."""
    if not math.isfinite(value):
        stop(f"non-finite {what} {value} at step {step}" + (f" ({detail})" if detail else ""), step, out)


def stop(msg, bad_step, out):
    """Raise FloatingPointError(msg), naming the last good checkpoint: the newest one from before `bad_step`,
    whose weights are finite (checked before every save) and gave a finite loss (checked at its step).
    If `latest` names the checkpoint of bad_step that this run saved (before its loss was seen), rank 0
    points `latest` back at the last good one and removes it; one the run started from is left as it is."""
    live = latest_checkpoint(out)
    last = live
    if live and (step_of(os.path.basename(live)) or 0) >= bad_step:
        earlier = sorted((step_of(d), d) for d in os.listdir(out) if (step_of(d) or bad_step) < bad_step)
        last = os.path.join(out, earlier[-1][1]) if earlier else None
        if (os.path.abspath(out), step_of(os.path.basename(live))) not in SAVED:
            msg += f"; {live}, which this run started from, gave it"
        else:
            if not dist.is_initialized() or dist.get_rank() == 0:
                if last:
                    point_latest(out, os.path.basename(last))
                else:
                    os.remove(os.path.join(out, "latest"))
                shutil.rmtree(live, ignore_errors=True)
            msg += f"; removed {live}, whose weights gave it"
    raise FloatingPointError(f"{msg}; stopping. Last good checkpoint: " + (
        f"{last} (resume with --resume after fixing the cause)" if last else "none (start again after fixing the cause)"))
