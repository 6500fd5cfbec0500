"""What every training stage needs, written once: device and dtype, distributed set-up (torchrun + FSDP2),
model and tokenizer loading, padding and log-prob helpers, the lr schedule and the optimizer step (whose
weights are checked finite), a JSONL metrics log, and the checks every stage runs on its data files.
Checkpoints (save, resume, the stop on a non-finite loss) are checkpoints.py.
"""
import argparse
import contextlib
import json
import math
import os
import random
import sys
import time

import torch
import torch.distributed as dist

import checkpoints
import jsonl
from model import Qwen2, Qwen2Config, first_nonfinite, num_params
import env
from tokenizer import EMBEDDED_TEMPLATE, Tokenizer


# -----------------------------------------------------------------------------
# arguments shared by the stage scripts

class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """--help as the stages print it: the docstring as written, and each flag's default, the one that will
    run (parse_args sets the embedded world's before --help is printed)."""


def add_common_args(ap, out, lr, steps, batch_size, epochs=None):
    """The flags every training stage has. epochs: the stage derives --steps from the size of its file when
    --steps is not given (settle_schedule); None: --steps is fixed (pretrain.py)."""
    ap.add_argument("--init", default=None, help="HF-layout checkpoint to start from (model + tokenizer.json)")
    ap.add_argument("--data", default=None, help="directory of the stage's files; not given: the embedded world, "
                    "runs/world (built when missing), except with --init, which needs it (data/README.md: "
                    "'A real checkpoint, end to end')")
    ap.add_argument("--out", default=out, help="output directory for checkpoints and metrics.jsonl")
    ap.add_argument("--resume", action="store_true", help="continue from --out's latest checkpoint")
    ap.add_argument("--force-resume", action="store_true",
                    help="resume although arguments changed (checkpoints.RESUME_MAY_CHANGE); exactness is lost")
    ap.add_argument("--overwrite", action="store_true",
                    help="start over in an --out that holds another run: delete its checkpoints and metrics first")
    ap.add_argument("--steps", type=int, default=steps,
                    help="optimizer steps" + (" (None: from --epochs)" if epochs is not None else ""))
    if epochs is not None:
        ap.add_argument("--epochs", type=float, default=epochs,
                        help="without --steps: passes over the stage's file, steps = ceil(epochs x rows / batch size)")
    ap.add_argument("--batch-size", type=int, default=batch_size, help="global batch size (sequences or prompts)")
    ap.add_argument("--lr", type=float, default=lr, help="peak learning rate")
    ap.add_argument("--warmup", type=int, default=10,
                    help="linear warm-up steps before cosine decay (more than --steps: --steps, with a note)")
    ap.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay")
    ap.add_argument("--grad-clip", type=float, default=1.0, help="max global grad norm (0 = off)")
    ap.add_argument("--max-len", type=int, default=1024, help="truncate training sequences to this many tokens")
    ap.add_argument("--save-every", type=int, default=50, help="checkpoint every N steps (and at the end)")
    ap.add_argument("--log-every", type=int, default=1, help="print and log metrics every N steps")
    ap.add_argument("--seed", type=int, default=0, help="seed for data order, init and sampling")
    ap.add_argument("--device", default=None, help="cpu | cuda | cuda:N (None: cuda if available)")
    ap.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                    help="parameter/compute dtype (None: bfloat16 on CUDA, float32 on CPU)")
    ap.add_argument("--grad-checkpointing", action="store_true", help="recompute activations in backward")
    ap.add_argument("--threads", type=int, default=None,
                    help="CPU threads for torch (None: torch's choice; 1 is far faster when other "
                         "processes share the cores, since idle OpenMP threads spin)")


def parse_args(ap, embedded, argv=None):
    """Parse a stage's flags. The defaults in `ap` are for a real checkpoint (the paper's settings where it
    gives them). `embedded` holds what the embedded world's tiny model needs instead (larger learning rates,
    fixed step counts); it fills the flags not given on the command line when the stage runs on the embedded
    world (checkpoints.is_world): no --data and no --init (the world is then the default data), a --ckpt of the
    world's (eval.py; world_checkpoint), or a --data directory that holds the world's world.json. A stage with
    a --topk flag then also searches for as many documents as the world's training observations show (its
    meta.json). Which defaults apply is settled from --data, --init and --ckpt before the rest is parsed, so
    --help shows the ones that will run. Refused here, before anything starts: a stage that starts from a
    checkpoint (it has --init) given --data other than the default world and no --init, since the world's
    checkpoints (checkpoints.DEFAULT_OUTPUTS) are no start for other data."""
    argv = sys.argv[1:] if argv is None else list(argv)
    required = [a for a in ap._actions if a.required]  # --help alone must not stop at a missing --ckpt
    for a in required:
        a.required = False
    pre, _ = ap.parse_known_args([a for a in argv if a not in ("-h", "--help")])
    for a in required:
        a.required = True
    data = pre.data
    if data is None and not getattr(pre, "init", None) and world_checkpoint(getattr(pre, "ckpt", None), True):
        data = checkpoints.default_path(checkpoints.WORLD)  # no --init, or eval's --ckpt is the world's
    given = lambda flag: any(a == flag or a.startswith(flag + "=") for a in argv)  # noqa: E731
    if hasattr(pre, "epochs") and given("--steps") and given("--epochs"):
        ap.error("--steps and --epochs both set the run's length: pass one of them")
    if data is not None and checkpoints.is_world(data):
        embedded = dict(embedded)
        if hasattr(pre, "epochs"):  # the world's step counts are tuned (EMBEDDED), unless --epochs asks otherwise
            embedded["epochs"] = pre.epochs if given("--epochs") else None
            if given("--epochs"):
                embedded.pop("steps", None)
        if hasattr(pre, "topk"):  # the world not built yet (a fresh clone): what it will be built with
            from data.build import TOPK
            meta = os.path.join(data, "meta.json")
            with open(meta) if os.path.isfile(meta) else contextlib.nullcontext() as f:
                embedded["topk"] = json.load(f)["topk"] if f else TOPK
        ap.set_defaults(**embedded)
    ap.set_defaults(data=data)
    args = ap.parse_args(argv)
    if getattr(args, "epochs", None) is not None and not args.epochs > 0:
        ap.error(f"--epochs must be > 0, got {args.epochs}")
    if getattr(args, "init", "") is None and not args.resume and args.data is not None \
            and checkpoints.default_output(args.data) != checkpoints.WORLD:
        raise SystemExit(checkpoints.init_needed(args.data))
    return args


def world_checkpoint(path, default=False):
    """Whether a checkpoint (or a stage's --out) is one of the embedded world's: its tokenizer has the world's
    chat format (pretrain.py writes EMBEDDED_TEMPLATE, or no tokenizer_config.json at all in older ones); a real
    Qwen2 checkpoint has its family's. `default` when no path is given."""
    if path is None:
        return default
    ckpt = checkpoints.resolve_checkpoint(path) if os.path.isdir(path) else None
    if ckpt is None:
        return False
    config = os.path.join(ckpt, "tokenizer_config.json")
    if not os.path.isfile(config):
        return True
    with open(config, encoding="utf-8") as f:
        return json.load(f).get("chat_template") == EMBEDDED_TEMPLATE


def settle_schedule(args, rows, what, run):
    """Settle the run's length once the stage's file is read: --steps, when not given (real data), is --epochs
    passes over its `rows` rows (the paper trains 2 epochs: 188 steps of its 1.5k pairs, 375 of its 6k
    trajectories), printed; --warmup never exceeds --steps (a warm-up longer than the run would end it below
    the peak lr). Both are saved in args.json as settled here."""
    if args.steps is None:
        args.steps = math.ceil(args.epochs * rows / args.batch_size)
        run.print(f"[schedule] --steps {args.steps}: {args.epochs:g} epochs of {rows} {what} at --batch-size "
                  f"{args.batch_size}, ceil({args.epochs:g} x {rows} / {args.batch_size})")
    if args.warmup > args.steps:
        run.print(f"[schedule] --warmup {args.warmup} is more than --steps {args.steps}: warming up over "
                  f"{args.steps} steps instead")
        args.warmup = args.steps


# -----------------------------------------------------------------------------
# device, dtype, distributed

class Run:
    """Everything decided once at start: device, dtype, rank/world, and the print for rank 0."""

    def __init__(self, args):
        self.distributed = "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1
        cuda = torch.cuda.is_available() and (args.device is None or args.device.startswith("cuda"))
        if self.distributed:
            dist.init_process_group("nccl" if cuda else "gloo")
            self.rank, self.world = dist.get_rank(), dist.get_world_size()
            local = int(os.environ.get("LOCAL_RANK", "0"))
            self.device = torch.device(f"cuda:{local}" if cuda else "cpu")
            if cuda:
                torch.cuda.set_device(self.device)
        else:
            self.rank, self.world = 0, 1
            self.device = torch.device(args.device or ("cuda" if cuda else "cpu"))
        self.dtype = getattr(torch, args.dtype) if args.dtype else (
            torch.bfloat16 if self.device.type == "cuda" else torch.float32)
        self.master = self.rank == 0
        if getattr(args, "data", "") is None:  # the embedded world is the default only for its own models
            if getattr(args, "init", None):
                raise SystemExit(f"--init {args.init} needs --data: the embedded world's data (runs/world) is only "
                                 "the default without --init (for real questions: data/convert.py, data/distill.py)")
            args.data = checkpoints.default_path(checkpoints.WORLD)
        if args.threads:
            torch.set_num_threads(args.threads)
        torch.manual_seed(args.seed)
        random.seed(args.seed)
        self.print(f"[run] device {self.device}  dtype {self.dtype}  world size {self.world}")
        self.print("[run] args " + json.dumps(vars(args)))

    def print(self, *a, **k):
        if self.master:
            print(*a, **k, flush=True)

    def all_sum(self, x):
        """Sum a float over ranks (a no-op on one process)."""
        return self._reduce(x, "SUM")

    def all_max(self, x):
        """Max of a float over ranks (a no-op on one process)."""
        return self._reduce(x, "MAX")

    def _reduce(self, x, op):
        if not self.distributed:
            return float(x)
        t = torch.tensor(float(x), dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=getattr(dist.ReduceOp, op))
        return t.item()

    def shard(self, items):
        """This rank's contiguous share of a global batch (every rank gets the same count)."""
        n = len(items) // self.world
        return items[self.rank * n:(self.rank + 1) * n]

    def close(self):
        if self.distributed:
            # Gloo's worker threads drop their last finished collective (and the tensors it holds) just
            # after the caller sees it complete. If the interpreter is already shutting down then, that
            # thread cannot take the GIL and the process aborts ("terminate called without an active
            # exception", seen now and then in 2-rank CPU runs). Let them finish while Python is still alive.
            dist.barrier()
            time.sleep(0.2)
            dist.destroy_process_group()


def load_model(path, run, grad_checkpointing=False, frozen=False):
    """Model + tokenizer from an HF-layout directory on run.device, FSDP2-sharded under torchrun.

    Mixed precision, as large models are trained: the weights a run trains are fp32 master copies, and
    their gradients and AdamW moments are fp32 too, while forward and backward compute in run.dtype (bf16
    on CUDA). Why: bf16 keeps 8 significant bits, so an update below half a ulp (~0.2-0.4% of the weight)
    rounds away; at the paper's lr (5e-6 SFT, 7e-7 RL) most of an AdamW step applied to bf16 weights is lost.
    One process: torch.autocast runs each matmul in bf16 (`autocast` below; gradients land in the fp32
    weights' .grad). torchrun: FSDP2's MixedPrecisionPolicy all-gathers bf16 copies of a block's fp32 shards
    for its forward and backward and reduce-scatters the gradients in fp32. A frozen model (GRPO's
    reference) has no gradients and no optimizer: it is held in run.dtype."""
    model = Qwen2.from_pretrained(path, device=run.device, dtype=run.dtype if frozen else torch.float32)
    model.compute_dtype = run.dtype  # read by autocast(model)
    tok = Tokenizer.from_pretrained(path)
    model.gradient_checkpointing = grad_checkpointing
    if run.distributed:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
        mp = MixedPrecisionPolicy(param_dtype=run.dtype, reduce_dtype=torch.float32)
        for block in model.model.layers:
            fully_shard(block, mp_policy=mp)
        fully_shard(model, mp_policy=mp)
    run.print(f"[model] {path}: {num_params(model) / 1e6:.2f}M parameters, vocab {tok.vocab_size}")
    return model, tok


def autocast(model):
    """Run the forwards inside in the model's compute dtype (load_model): torch.autocast to bf16 matmuls over
    fp32 weights; nothing for fp32. Under FSDP2 the policy already hands the forward bf16 weights, and
    autocast on top changes nothing but keeps one code path. RMSNorm and the log-softmax stay in fp32
    (model.py, kernels/logprobs.py)."""
    dtype = getattr(model, "compute_dtype", torch.float32)
    device = next(model.parameters()).device.type
    return torch.autocast(device, dtype=dtype, enabled=dtype != torch.float32)


@contextlib.contextmanager
def unsharded(model):
    """Under FSDP2, the whole model gathered on every rank for the duration (GRPO's sampling); a no-op on
    one process. Sharded, every forward all-gathers, a collective: ranks whose rollouts end after a
    different number of decode steps would wait on each other forever. Gathered once here, the forwards
    issue no collectives. Gathering here, outside the sampler's inference mode, also matters: FSDP keeps
    the buffers of its first all-gather, and ones born in inference mode cannot be written by a later
    training forward ("Inplace update to inference tensor outside InferenceMode")."""
    from torch.distributed.fsdp import FSDPModule
    mods = [m for m in model.modules() if isinstance(m, FSDPModule)]
    if not mods:
        yield model
        return
    model.set_reshard_after_forward(False)
    for m in mods:
        m.unshard()
    try:
        yield model
    finally:
        for m in mods:
            m.reshard()
        model.set_reshard_after_forward(True)
        model.set_reshard_after_forward(False, recurse=False)  # the root's setting, as fully_shard left it


# -----------------------------------------------------------------------------
# batches and log-probs

def pad(seqs, value=0):
    """Right-pad lists of ints to a (B, T) long tensor."""
    T = max(len(s) for s in seqs)
    return torch.tensor([list(s) + [value] * (T - len(s)) for s in seqs], dtype=torch.long)


def length_batches(lengths, max_tokens, run=None):
    """Split one step's sequences into micro-batches of similar length: indices sorted by length, cut so
    that each padded micro-batch holds at most max_tokens (rows x its longest row). Accumulating gradients
    over them gives the same step as one padded batch, without computing on most of the padding.
    With `run` (FSDP), every rank gets the same number of micro-batches (the largest any rank needs), since
    each forward/backward is a collective."""
    order, out, cur = sorted(range(len(lengths)), key=lambda i: lengths[i]), [], []
    for i in order:
        if cur and (len(cur) + 1) * lengths[i] > max_tokens:
            out.append(cur)
            cur = []
        cur.append(i)
    out += [cur] if cur else []
    if run is not None and run.distributed:
        n = min(int(run.all_max(len(out))), len(order))
        while len(out) < n:  # split the largest micro-batch until the count matches
            big = max(range(len(out)), key=lambda j: len(out[j]))
            out[big:big + 1] = [out[big][:len(out[big]) // 2], out[big][len(out[big]) // 2:]]
    return out


def sequence_logprobs(model, ids, mask, device):
    """Per-token log p(ids[t] | ids[<t]) for a right-padded batch (B, T) of ids with a (B, T) 0/1 mask of the
    tokens to score. Returns (lp, m): (B, T-1) fp32 log-probs of the targets ids[:, 1:] (0 where
    unscored), and the (B, T-1) bool mask aligned with them."""
    ids, mask = ids.to(device), mask.to(device)
    m = mask[:, 1:].bool()
    with autocast(model):
        lp = model(ids[:, :-1], targets=ids[:, 1:], loss_mask=m)
    return lp, m


def encode_prompt(tok, question, tool=True):
    """The generation prompt every stage (and the sampler) conditions on: the checkpoint's chat template
    + the tool's instruction (tool=False: none, eval.py's no-tool baseline), ending with `<think>` and a
    newline (tokenizer.Tokenizer.agent_prompt)."""
    return tok.encode(tok.agent_prompt(question, env.INSTRUCTION if tool else ""))


# -----------------------------------------------------------------------------
# optimizer and schedule

def make_optimizer(model, args):
    return torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=args.weight_decay,
                             eps=1e-8)


def lr_at(step, args):
    """Linear warm-up, then cosine decay to 10% of the peak (the paper's code uses cosine; docs/paper.md). With
    args.decay < 1 (pretrain.py) the peak holds until the last `decay` share of the steps, and the cosine runs
    over those only ("warm-up, stable, decay")."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    start = max(args.warmup, args.steps - round(getattr(args, "decay", 1.0) * args.steps))
    frac = max(0, step - start) / max(1, args.steps - start)
    return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))


def clip_and_step(model, opt, step, args, lr=None):
    """Set this step's lr (lr_at(step, args) unless given), clip, and step. A non-finite gradient stops the
    run before it reaches the weights; weights the step made non-finite (an lr so large that the update
    overflows) stop it before any save."""
    for g in opt.param_groups:
        g["lr"] = lr_at(step, args) if lr is None else lr
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip if args.grad_clip > 0 else float("inf"))
    norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
    updated = [(n, p) for n, p in model.named_parameters() if p.grad is not None]  # what opt.step() changes
    if not math.isfinite(norm):
        bad = first_nonfinite((n, p.grad) for n, p in updated)
        checkpoints.check_finite(norm, step, args.out, what="gradient norm", detail=bad and f"first non-finite gradient: {bad}")
    try:
        opt.step()
    except RuntimeError as e:  # AdamW's step size lr / (1 - beta1^t) beyond the dtype's range
        if "overflow" not in str(e):
            raise
        checkpoints.stop(f"the optimizer step of step {step} overflowed ({e})", step + 1, args.out)
    bad = first_nonfinite(updated)  # one fused max |w| over the updated weights, one sync
    if dist.is_initialized():  # every rank stops together, or the others would wait in the next collective
        flag = torch.tensor(float(bad is not None), device=updated[0][1].device if updated else "cpu")
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        bad = bad or ("a weight on another rank" if flag.item() else None)
    if bad is not None:
        checkpoints.stop(f"non-finite weight {bad} after the optimizer step of step {step}", step + 1, args.out)
    opt.zero_grad(set_to_none=True)
    return norm


# -----------------------------------------------------------------------------
# metrics: a JSONL log and a progress bar

class Metrics:
    """Append-only JSONL log (rank 0 only) plus a progress bar. A run that starts at step `start` (a resumed
    one) first drops the rows of steps >= start, which it is about to log again: one row per step."""

    def __init__(self, run, out, total, start, desc):
        self.run = run
        self.path = os.path.join(out, "metrics.jsonl")
        self.t0 = time.time()
        self.bar = None
        if run.master:
            os.makedirs(out, exist_ok=True)
            if os.path.isfile(self.path):
                with open(self.path) as f:
                    lines = f.readlines()
                with open(self.path + ".tmp", "w") as f:
                    f.writelines(line for line in lines if _logged_before(line, start))
                os.replace(self.path + ".tmp", self.path)
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=start, desc=desc, dynamic_ncols=True, file=sys.stdout,
                            disable=None)

    def log(self, step, **values):
        if not self.run.master:
            return
        row = {"step": step, "time": round(time.time() - self.t0, 3), **values}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.bar is not None:
            self.bar.set_postfix({k: f"{v:.4g}" if isinstance(v, float) else v for k, v in values.items()},
                                 refresh=False)

    def tick(self):
        if self.bar is not None:
            self.bar.update(1)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def _logged_before(line, start):
    """Whether a metrics.jsonl line is a whole row of a step before `start` (a line cut by a kill is not)."""
    try:
        return json.loads(line)["step"] < start
    except (json.JSONDecodeError, KeyError, TypeError):
        return False


# -----------------------------------------------------------------------------
# data files: every stage checks its rows up front, before the model loads

# What each stage's JSONL rows must hold, written out as data (checked by jsonl.schema_error): field -> type;
# "name?" is optional (null counts as absent); [spec] is a non-empty list of spec; {...} an object. Other
# fields are allowed and ignored.
BASE_ROWS = {"text": str, "question?": str, "response?": str, "instruction?": bool,  # pretrain.py: base.jsonl
             "segments?": [{"text": str, "tool": bool}]}
PAIR_ROWS = {"question": str, "prefix": str, "chosen": str, "rejected": str,  # sft_contrastive.py: stage1.jsonl
             "direction?": str}
TRAJECTORY_ROWS = {"question": str, "segments": [{"text": str, "tool": bool}],  # sft_coa.py: stage2, workflow
                   "kind?": str}
QUESTION_ROWS = {"id": (str, int), "question": str, "answers": [str], "hops?": int}  # grpo.py, eval.py


def read_jsonl(path, schema=None, also=""):
    """Rows of a stage's JSONL file (jsonl.read: blank lines skipped, an empty file refused), each checked
    against `schema` if given: a bad row is a ValueError naming the file, line and field. A missing file stops
    the run (SystemExit) with one line naming it and the command that makes it (missing), plus `also`."""
    return jsonl.read(need_file(path, also), schema)


def need_file(path, also=""):
    """`path`, or a stop (SystemExit) with one line naming it and the command that makes it (missing)."""
    if not os.path.isfile(path):
        raise SystemExit(missing(path) + also)
    return path


# The files that only data/build.py writes (the embedded world's); every other question split is any name
# data/convert.py --split gives it.
WORLD_ONLY = {"base.jsonl": "pretrain.py's text", "workflow.jsonl": "the workflow baseline's trajectories",
              "test_cf.jsonl": "the counterfactual questions", "corpus_cf.jsonl": "the counterfactual corpus"}


def missing(path):
    """Why a stage's file is missing, as one line: the file, and the command that makes it (data/README.md)."""
    folder, name = os.path.split(path)
    if checkpoints.is_world(folder):
        how = f"the embedded world's files are made by `python -m data.build --out {folder}`"
    elif name in WORLD_ONLY:
        how = (f"{WORLD_ONLY[name]}, which only the embedded world has (`python -m data.build`); real data has "
               f"stage1.jsonl, stage2.jsonl and question splits (data/README.md)")
    elif name in ("stage1.jsonl", "stage2.jsonl"):
        how = (f"it is made from the train split by `python -m data.distill sample --questions {folder}/train.jsonl "
               f"--search {folder}/corpus.jsonl --teacher CHECKPOINT_OR_URL --out {folder}`"
               + (", or from chat-format SFT rows by `python -m data.distill import FILE --out DIR`"
                  if name == "stage2.jsonl" else ""))
    elif name == "corpus.jsonl":
        how = (f"it is made by `python -m data.convert DATASET FILE --out {folder} --split SPLIT` (each split adds "
               "to it)")
    else:
        how = f"it is made by `python -m data.convert DATASET FILE --out {folder} --split {name[:-len('.jsonl')]}`"
    return f"{path} is missing: {how} (data/README.md, 'A real checkpoint, end to end')"


# What the schemas cannot say: the action format inside the texts (data/README.md, Formats). A trajectory with
# `<begin_search>` and no `</end_search>` trains the model to act without ever closing the action, and the
# sampler (which waits for the closing tag) would then never run the search.

def trajectory_error(row, tags=env.TAGS):
    """The first way a stage-2/3 trajectory (TRAJECTORY_ROWS) breaks the action format, as text, or None:
    in every model segment the action tags alternate open/close and end closed (env.actions_closed), and
    no observation tag appears (it would be trained as the model's own text); a tool segment is one whole
    observation, `<search_result> ... </search_result>` (env.format_observation), and follows a model
    segment that ends with the closing action tag -- except in the workflow baseline's rows (kind
    "workflow"), where a controller, not the model, searches: their model segments hold no action tag."""
    segs, workflow = row["segments"], row.get("kind") == "workflow"
    for j, seg in enumerate(segs):
        text, where = seg["text"], f"segments[{j}]"
        if seg["tool"]:
            body = text.strip()
            if not (body.startswith(tags.result_open) and body.endswith(tags.result_close)
                    and body.count(tags.result_open) == body.count(tags.result_close) == 1):
                return (f"{where} (tool) should be one whole observation, {tags.result_open} ... "
                        f"{tags.result_close}, got {_ends(text)}")
            before = segs[j - 1] if j else None
            if not workflow and (before is None or before["tool"] or not before["text"].endswith(tags.search_close)):
                return (f"{where} (tool) answers no action: the model segment before it should end with "
                        f"{tags.search_close}" + (f", got {_ends(before['text'])}" if before else ", and there is none"))
        elif tags.result_open in text or tags.result_close in text:
            return (f"{where} (model) holds an observation tag ({tags.result_open} or {tags.result_close}): "
                    f"observations are tool segments of their own")
        elif workflow and (tags.search_open in text or tags.search_close in text):
            return f"{where} (model) holds an action tag, but in a workflow row the controller searches, not the model"
        elif not env.actions_closed(text, tags):
            return (f"{where} (model): action tags should alternate {tags.search_open} ... {tags.search_close} "
                    f"and end closed, got {_ends(text)}")
    return None


def pair_error(row, tags=env.TAGS):
    """The first way a stage-1 pair (PAIR_ROWS) breaks the action format, as text, or None: the prefix
    followed by either continuation has its action tags alternate open/close and end closed, so a
    continuation that opens an action closes it."""
    for name in ("chosen", "rejected"):
        if not env.actions_closed(row["prefix"] + row[name], tags):
            return (f"prefix + {name}: action tags should alternate {tags.search_open} ... {tags.search_close} and "
                    f"end closed, got {name} {_ends(row[name])}")
    return None


def _ends(text, n=40):
    """A long text by its two ends, for an error message."""
    return repr(text) if len(text) <= 2 * n else f"{text[:n]!r} ... {text[-n:]!r}"


def check_rows(rows, error):
    """Raise ValueError naming the file and line of the first row for which error(row) says something."""
    for i, row in enumerate(rows):
        err = error(row)
        if err:
            raise ValueError(f"{rows.where(i)}: {err}")


def load_for_sampling(args, ckpt, split, tag):
    """What eval.py and probe.py do before sampling: read and check the split's question rows (before the
    model loads: a question beyond the context fails here), keep --limit of them evenly spread, then load
    the model (eval mode) and tokenizer in the device and dtype the flags say. -> (rows, model, tok)."""
    dtype = getattr(torch, args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32"))
    print(f"[{tag}] device {args.device}, dtype {dtype}, checkpoint {ckpt}, split {split}")
    print(f"[{tag}] args " + json.dumps(vars(args)))
    rows = read_jsonl(os.path.join(args.data, f"{split}.jsonl"), QUESTION_ROWS)
    check_prompts(rows, ckpt)
    rows = evenly_spaced(rows, args.limit)
    model = Qwen2.from_pretrained(ckpt, device=args.device, dtype=dtype).eval()
    return rows, model, Tokenizer.from_pretrained(ckpt)


def check_prompts(rows, ckpt):
    """Refuse a question whose prompt does not fit the checkpoint's context (config.json's
    max_position_embeddings), naming file and line. Reads only the config and tokenizer, so it runs before
    the model loads, and long before the sampler would size a KV cache for the whole prompt."""
    context = Qwen2Config.from_json(os.path.join(ckpt, "config.json")).max_position_embeddings
    tok = Tokenizer.from_pretrained(ckpt)
    for i, row in enumerate(rows):
        n = len(encode_prompt(tok, row["question"]))
        if n >= context:
            raise ValueError(f"{rows.where(i)}: the question's prompt is {n} tokens, and the model's context "
                             f"(max_position_embeddings in {ckpt}/config.json) is {context}: no room to answer")


def evenly_spaced(rows, n):
    """n rows spread evenly over `rows` (all of them if n is 0 or too large): the question files are ordered
    by stratum, so this keeps every stratum."""
    if not n or n >= len(rows):
        return rows
    return [rows[i * len(rows) // n] for i in range(n)]


def epoch_order(n, step, batch_size, seed):
    """Indices of the global batch for `step`: a fresh seeded permutation per epoch, so the data order is
    a pure function of (seed, step) and a resumed run sees exactly the batches it would have seen."""
    out = []
    pos = step * batch_size
    while len(out) < batch_size:
        epoch, i = divmod(pos, n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100003 + epoch)).tolist()
        take = min(batch_size - len(out), n - i)
        out += perm[i:i + take]
        pos += take
    return out
