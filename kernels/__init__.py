"""Custom kernels for the hot spots of AutoCoA: attention (training/prefill and KV-cache decode) and the
masked token log-prob.

Each op lives in its own file, in Triton-tutorial order: a PyTorch reference (also the CPU fallback),
the @triton.jit kernel(s), the launcher, the autograd Function, and a benchmark under __main__. Every op
has one name and three entry points:

  kernels/attention.py  attention         attention_triton         attention_reference
  kernels/decode.py     decode_attention  decode_attention_triton  decode_attention_reference
  kernels/logprobs.py   masked_logprobs   masked_logprobs_triton   masked_logprobs_reference

The plain name dispatches per call, by the device of its first tensor (use_triton below): a CUDA
tensor goes to the Triton kernels, any other tensor to the PyTorch reference. So on a GPU machine the
CPU tensors of the model tests still take the reference path. AUTOCOA_KERNELS overrides it:
  auto   (default) by device, as above;
  torch  always the references;
  triton always the Triton kernels (CPU tensors then need TRITON_INTERPRET=1: the tests use this).
The *_triton and *_reference names skip the dispatch. Importing this package has no side effects.

This folder's name is also that of Hugging Face's `kernels` package, which transformers imports whenever it is
installed. A Python started in the repository root finds this folder first; __getattr__ below then says so
instead of transformers failing on a name this package lacks. The tests run transformers in a process of its
own started outside the repository (tests/hf_oracle.py).
"""
import os


def use_triton(x):
    """True when an op on tensor x should run its Triton kernels (see the module docstring)."""
    choice = os.environ.get("AUTOCOA_KERNELS", "auto") or "auto"  # read per call: tests flip it
    if choice == "auto":
        return x.is_cuda
    if choice in ("torch", "triton"):
        return choice == "triton"
    raise ValueError(f"AUTOCOA_KERNELS must be 'auto', 'torch' or 'triton', got {choice!r}")


def __getattr__(name):
    """A name this package lacks (PEP 562): most likely transformers asking Hugging Face's `kernels` package
    for one (`from kernels import CUDAProperties`), so an ImportError that says which folder this is."""
    here = os.path.dirname(os.path.abspath(__file__))
    if name.startswith("_") or os.path.isfile(os.path.join(here, name + ".py")):
        # dunder probes (getattr(m, "__version__", None)) and submodules not imported yet (`from kernels import
        # decode` asks hasattr first) must see the usual AttributeError
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    # USE_HUB_KERNELS=NO does not help: transformers imports the package whenever it is installed
    raise ImportError(
        f"cannot import name {name!r} from 'kernels' ({here}): this is the AutoCoA project's own kernels/ "
        "folder, not Hugging Face's `kernels` package, which transformers imports whenever it is installed. "
        "Python found this folder first because it was started in the repository root (or with the root on "
        "sys.path). Run transformers from outside the repository, or in a separate process started outside it "
        "(as tests/hf_oracle.py does), or `pip uninstall kernels` if you do not need Hugging Face's kernels.",
        name=name)
