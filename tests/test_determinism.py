"""Deterministic kernels: the flags a run sets before CUDA starts, and which architectures'
training step holds an op that has no deterministic CUDA kernel (the registry's table,
checked against the aten ops one step records here: the CPU dispatches the same ops)."""

from __future__ import annotations

import os

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from gi_utils.losses import build_loss
from gi_utils.models import ARCH_SPECS, build_model, split_outputs
from gi_utils.training import CUBLAS_WORKSPACE_CONFIG, TrainConfig, seed_everything
from gi_utils.training import session as session_mod

#: ``torch.use_deterministic_algorithms``' list (torch 2.14 docstring) of the ops that throw
#: under ``mode=True`` on CUDA (no deterministic kernel), as aten op names.
NO_DETERMINISTIC_CUDA_KERNEL = frozenset({
    "avg_pool3d_backward", "_adaptive_avg_pool2d_backward", "_adaptive_avg_pool3d_backward",
    "adaptive_max_pool2d_backward", "fractional_max_pool2d_backward", "fractional_max_pool3d_backward",
    "max_unpool1d", "max_unpool2d", "max_unpool3d", "upsample_linear1d_backward", "upsample_bilinear2d_backward",
    "upsample_bicubic2d_backward", "upsample_trilinear3d_backward", "_upsample_bilinear2d_aa_backward",
    "_upsample_bicubic2d_aa_backward", "reflection_pad1d_backward", "reflection_pad2d_backward",
    "reflection_pad3d_backward", "nll_loss_forward", "nll_loss2d_forward", "_ctc_loss_backward",
    "_embedding_bag_backward", "put_", "put", "histc", "bincount", "median", "grid_sampler_2d_backward",
    "grid_sampler_3d_backward", "scatter_reduce",
})  # fmt: skip
#: Ops of the same list that are deterministic on CUDA only with the flag on (which
#: seed_everything sets): the table holds for runs with ``deterministic=True``.
DETERMINISTIC_WITH_THE_FLAG = frozenset({
    "convolution_backward", "max_pool3d_with_indices_backward", "replication_pad1d_backward",
    "replication_pad2d_backward", "replication_pad3d_backward", "cumsum", "index_put", "index_put_",
    "_index_put_impl_", "scatter_add", "scatter_add_", "gather_backward", "index_add", "index_add_",
    "index_select_backward", "repeat_interleave", "index_copy", "embedding_dense_backward",
})  # fmt: skip


class OpNames(TorchDispatchMode):
    """The aten op names dispatched inside the mode."""

    def __init__(self) -> None:
        super().__init__()
        self.names: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.add(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


@pytest.fixture
def torch_flags():
    """Restores the process-wide flags a test changes."""
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
             torch.utils.deterministic.fill_uninitialized_memory)  # fmt: skip
    yield
    torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[2], saved[3]
    torch.utils.deterministic.fill_uninitialized_memory = saved[4]


def test_deterministic_seeding_sets_torchs_flag_and_the_cublas_workspace(monkeypatch, torch_flags):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    seed_everything(3, deterministic=True)
    assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == CUBLAS_WORKSPACE_CONFIG == ":4096:8"
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")  # a setting of the user's is kept
    seed_everything(3, deterministic=True)
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"
    seed_everything(3, deterministic=False)
    assert not torch.are_deterministic_algorithms_enabled()


def test_a_run_sets_them_before_its_accelerator_starts_cuda(monkeypatch, tmp_path, torch_flags):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    torch.use_deterministic_algorithms(False)
    seen = {}

    def accelerator(cfg):
        seen.update(env=os.environ.get("CUBLAS_WORKSPACE_CONFIG"), flag=torch.are_deterministic_algorithms_enabled())
        raise KeyboardInterrupt

    monkeypatch.setattr(session_mod, "make_accelerator", accelerator)
    with pytest.raises(KeyboardInterrupt):
        session_mod.TrainingRun(TrainConfig(out_dir=str(tmp_path), data_dir=str(tmp_path)))
    assert seen == {"env": CUBLAS_WORKSPACE_CONFIG, "flag": True}


@pytest.mark.parametrize("name", list(ARCH_SPECS))
def test_the_registry_names_the_ops_without_a_deterministic_cuda_kernel(name):
    """One training step of each architecture (its default settings, a ResNet encoder,
    the default loss): the registry's ops are exactly those of the documented list."""
    spec, cfg = ARCH_SPECS[name], TrainConfig()
    torch.manual_seed(0)
    model = build_model(name, "resnet18", spec.in_channels(cfg.slice_offsets), 3)
    x = torch.randn(2, 1, 16, 32, 32) if spec.is_3d else torch.randn(2, 3, 64, 64)
    loss_fn = build_loss(cfg.loss, **cfg.loss_kwargs)
    with OpNames() as ops:
        seg, _ = split_outputs(model(x))
        loss_fn(seg.float(), (torch.rand_like(seg) > 0.5).float()).backward()
    assert ops.names & DETERMINISTIC_WITH_THE_FLAG  # every one needs the flag on (its convolutions' backward)
    assert sorted(ops.names & NO_DETERMINISTIC_CUDA_KERNEL) == sorted(spec.cuda_nondeterministic)
    assert spec.cuda_deterministic == (not ops.names & NO_DETERMINISTIC_CUDA_KERNEL)
