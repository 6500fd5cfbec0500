"""Shared test set-up: the repo root on sys.path, Triton kernels run by the CPU interpreter, small threads."""
import os
import sys

os.environ.setdefault("TRITON_INTERPRET", "1")  # before anything imports triton
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

torch.set_num_threads(1)  # tiny ops: a second thread only adds OpenMP spin when cores are shared
