"""Seeds and deterministic kernels: what makes two runs of one config, or a run and its
resumption, compute the same numbers.

On the CPU that holds for every architecture (``tests/test_kill_resume.py``). On CUDA it
needs more than seeds: :func:`seed_everything` turns on PyTorch's deterministic algorithms
(``warn_only``: an op with no deterministic CUDA kernel warns and runs), cuDNN's fixed
kernels and the cuBLAS workspace setting they require. Some architectures still hold such
an op in their training step (bilinear or trilinear upsampling, adaptive average pooling:
:attr:`ArchSpec.cuda_nondeterministic <gi_utils.models.registry.ArchSpec.cuda_nondeterministic>`
names them); their CUDA runs may differ in the last bits (``docs/determinism.md``).
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch

__all__ = ["CUBLAS_WORKSPACE_CONFIG", "seed_everything"]

#: cuBLAS's workspace setting for deterministic results (CUDA >= 10.2), used unless the
#: environment already sets one; read by PyTorch at the process's first cuBLAS call.
CUBLAS_WORKSPACE_CONFIG: str = ":4096:8"


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed python, numpy and torch; with ``deterministic``, deterministic kernels.

    ``deterministic=True``: ``CUBLAS_WORKSPACE_CONFIG`` (:data:`CUBLAS_WORKSPACE_CONFIG`
    unless set: call this before the first CUDA matrix product of the process), cuDNN's
    deterministic kernels without benchmarking, and
    ``torch.use_deterministic_algorithms(True, warn_only=True)`` without its filling of
    new tensors (that guards against reading uninitialised memory, which this code does
    not do, at the cost of a write of every new tensor). ``False`` turns torch's flag off
    (the process-wide setting follows the last run).
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE_CONFIG)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        torch.utils.deterministic.fill_uninitialized_memory = False
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
