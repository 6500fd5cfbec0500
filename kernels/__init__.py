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
