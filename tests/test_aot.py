"""Ahead-of-time compile check: every Triton kernel, in every config its launcher or autotuner can pick,
compiled for real GPUs on this CPU-only machine; each must fit the target's shared memory per block and
spill no registers. A config that does not fit fails at launch (or is silently dropped by the autotuner);
one that spills runs slowly. Neither shows under TRITON_INTERPRET=1, which never compiles anything.

How it works:
  - A child process runs without TRITON_INTERPRET (the interpreter replaces @triton.jit kernels by a
    Python emulator, which cannot be compiled). It calls each launcher on small CPU tensors laid out
    like the model's, with every kernel swapped for a recorder: launches are recorded, not run. So the
    arguments, the config the decode launcher picks and the configs each autotuner keeps after its
    prune are exactly those of a GPU run with the same shapes.
  - Each recorded launch x config is compiled by triton.compile(ASTSource(...), target=GPUTarget("cuda",
    cc, 32)) with the argument specialisation a real launch gets (Triton's own binder: divisibility by
    16, integers equal to 1 become constants). The compiled metadata gives the shared memory; cuobjdump
    -res-usage (shipped in the triton wheel, beside ptxas) on the cubin gives registers and STACK, the
    local memory that spilled registers live in.
  - Asserted for every compile: shared <= the target's limit (sm_90: 232,448 B; sm_80: 166,912 B) and
    STACK == 0. Compiles land in Triton's cache (~/.triton/cache), so a second run is quick.
Default set: sm_90, head_dim 128 (the largest the kernels accept: most shared memory, most registers),
bf16 and fp32, causal. AOT_FULL=1 adds sm_80, fp16, head_dims 16/32/64 and non-causal attention.
Run:
  python -m pytest -q tests/test_aot.py              # default set
  AOT_FULL=1 python -m pytest -q tests/test_aot.py   # everything
  python tests/test_aot.py [--full]                  # the table of every compile
"""
import json
import os
import re
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMEM_LIMIT = {90: 232448, 80: 166912}  # bytes of shared memory one block may opt in to
KERNELS = ["_attn_fwd", "_attn_bwd_dq", "_attn_bwd_dkdv", "_decode_split", "_decode_combine",
           "_lse_target_kernel", "_logits_grad_kernel"]


def _tool(name):
    import triton
    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)
    return path if os.path.exists(path) else None


# ----------------------------------------------------------------------------------------------
# The child process: record every launch, compile it for each target, report one JSON line each
# ----------------------------------------------------------------------------------------------

class _Recorder:
    """Stands in for a kernel: kernel[grid](*args, **kwargs) records the launch instead of running it."""

    def __init__(self, name, kernel, launches):
        self.name, self.kernel, self.launches = name, kernel, launches

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.launches.append((self.name, self.kernel, args, kwargs))


def _record(full, cc):
    """Call every launcher on CPU tensors as if on a GPU of compute capability cc;
    return [(case, kernel name, kernel, args, kwargs)]."""
    import torch
    from kernels import attention as A, decode as Dm, logprobs as L

    launches = []
    for mod in (A, Dm, L):
        for name in KERNELS:
            kernel = getattr(mod, name, None)
            if kernel is not None:
                setattr(mod, name, _Recorder(name, kernel.kernel if isinstance(kernel, _Recorder) else kernel, launches))
    Dm._num_sms = lambda device: 132  # an H100's SM count: the decode launcher sizes its chunks by it
    A._arch = lambda device: cc // 10  # the autotuners' prune asks for the GPU family

    dtypes = [torch.bfloat16, torch.float16, torch.float32] if full else [torch.bfloat16, torch.float32]
    head_dims = [16, 32, 64, 128] if full else [128]
    out = []

    def take(case):
        out.extend((case, *launch) for launch in launches)
        launches.clear()

    for dt in dtypes:
        for D in head_dims:
            # Attention: the model's (B, T, H, D).transpose(1, 2) views, 7B's 28/4 heads
            B, Hq, Hkv, T = 1, 28, 4, 1024
            q, o, do = (torch.empty(B, T, Hq, D, dtype=dt).transpose(1, 2) for _ in range(3))
            k, v = (torch.empty(B, T, Hkv, D, dtype=dt).transpose(1, 2) for _ in range(2))
            lse = torch.empty(B, Hq, T)
            for causal in ([True, False] if full else [True]):
                A._flash_fwd(q, k, v, causal, D ** -0.5)
                A._flash_bwd(do, q, k, v, o, lse, causal, D ** -0.5)
                take(f"{str(dt)[6:]} D={D} causal={causal}")
            # Decode: one to many new tokens per row (G * T rows: every row block the launcher can pick)
            S_max = 4096
            kc, vc = (torch.empty(B, Hkv, S_max, D, dtype=dt) for _ in range(2))
            for T_new in (1, 2, 3, 5, 10, 19, 37):
                qd = torch.empty(B, Hq, T_new, D, dtype=dt)
                Dm.decode_attention_triton(qd, kc, vc, torch.tensor([100]))
                take(f"{str(dt)[6:]} D={D} decode T={T_new}")
        # Masked log-probs: Qwen's vocabulary, forward and backward (the kernels never see H)
        V = 151936
        h = torch.zeros(4, 64, dtype=dt, requires_grad=True)
        w = torch.zeros(V, 64, dtype=dt, requires_grad=True)
        L.masked_logprobs_triton(h, w, torch.zeros(4, dtype=torch.long), torch.ones(4, dtype=torch.bool)).sum().backward()
        take(f"{str(dt)[6:]} V={V}")
    return out


def _launch_kwargs(kernel, args, kwargs):
    """(the JITFunction, [launch kwargs per config]): an autotuner's configs after its prune, else the launch."""
    from triton.runtime.autotuner import Autotuner
    if not isinstance(kernel, Autotuner):
        return kernel, [kwargs]
    kernel.nargs = dict(zip(kernel.arg_names, args))
    try:
        configs = kernel.prune_configs(kwargs)
    finally:
        kernel.nargs = None
    return kernel.fn, [{**kwargs, **c.all_kwargs()} for c in configs]


def _compile(fn, args, kwargs, cc):
    """Compile one launch for compute capability cc; return (shared bytes, registers, stack bytes)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.compiler.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    target = GPUTarget("cuda", cc, 32)
    backend = make_backend(target)
    binder = create_function_from_signature(fn.signature, fn.params, backend)  # what a launch runs
    bound, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, specialization, options)
    compiled = triton.compile(ASTSource(fn, signature, constexprs, attrs), target=target, options=options.__dict__)
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        usage = subprocess.run([_tool("cuobjdump"), "-res-usage", f.name], capture_output=True, text=True,
                               check=True).stdout
    m = re.search(r"REG:(\d+) STACK:(\d+)", usage)
    assert m, f"cannot read cuobjdump -res-usage output:\n{usage}"
    return compiled.metadata.shared, int(m.group(1)), int(m.group(2))


def _child(full):
    sys.path.insert(0, ROOT)
    import triton
    print(f"# triton {triton.__version__}", flush=True)
    tune_keys = ("BLOCK_M", "BLOCK_N", "BLOCK_R", "BLOCK_S", "BLOCK_V", "num_warps", "num_stages")
    for cc in ([90, 80] if full else [90]):
        for case, name, kernel, args, kwargs in _record(full, cc):
            fn, launches = _launch_kwargs(kernel, args, kwargs)
            for kw in launches:
                config = " ".join(f"{k}={kw[k]}" for k in tune_keys if k in kw)
                shared, regs, stack = _compile(fn, args, kw, cc)
                print("AOT " + json.dumps(dict(kernel=name, case=case, config=config, sm=cc, shared=shared,
                                               limit=SMEM_LIMIT[cc], regs=regs, stack=stack)), flush=True)


def run_child(full):
    """Run the compile in a fresh process without TRITON_INTERPRET; return the list of result dicts."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # the default either way; silences a warning
    args = [sys.executable, os.path.abspath(__file__), "--child"] + (["--full"] if full else [])
    p = subprocess.run(args, env=env, capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0, f"AOT compile child failed:\n{p.stdout[-3000:]}\n{p.stderr[-6000:]}"
    return [json.loads(line[4:]) for line in p.stdout.splitlines() if line.startswith("AOT ")]


def _row(r):
    return f"{r['kernel']:<20} {r['case']:<28} {r['config']:<44} sm_{r['sm']} shared {r['shared']:>6} " \
           f"regs {r['regs']:>3} stack {r['stack']:>3}"


# ----------------------------------------------------------------------------------------------
# The tests
# ----------------------------------------------------------------------------------------------

if __name__ != "__main__":
    import pytest

    @pytest.fixture(scope="module")
    def results():
        if _tool("ptxas") is None or _tool("cuobjdump") is None:
            pytest.skip("ptxas/cuobjdump not found in the triton wheel (triton/backends/nvidia/bin): "
                        "cannot compile for a GPU here")
        return run_child(os.environ.get("AOT_FULL") == "1")

    @pytest.mark.parametrize("kernel", KERNELS)
    def test_every_config_fits_and_does_not_spill(results, kernel):
        mine = [r for r in results if r["kernel"] == kernel]
        assert mine, f"no launch of {kernel} was recorded: its launcher changed, update tests/test_aot.py"
        bad = [r for r in mine if r["shared"] > r["limit"] or r["stack"] > 0]
        assert not bad, (f"{len(bad)} of {len(mine)} compiles of {kernel} exceed shared memory or spill:\n"
                         + "\n".join(_row(r) for r in bad))


if __name__ == "__main__":
    if "--child" in sys.argv:
        _child("--full" in sys.argv)
    else:
        rows = run_child("--full" in sys.argv)
        for r in rows:
            flag = "  <- OVER" if r["shared"] > r["limit"] else "  <- SPILLS" if r["stack"] else ""
            print(_row(r) + flag)
        print(f"{len(rows)} compiles, {sum(r['shared'] > r['limit'] or r['stack'] > 0 for r in rows)} failing")
