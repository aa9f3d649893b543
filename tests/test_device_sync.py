"""The device feed never waits for the device: no op in the augmentation or in a
DeviceLoader batch reads a value back to the host.

On a GPU each such read (``.any()``, ``int(x.sum())``, boolean-mask indexing) and each
blocking copy to the device (``.to(device)`` from pageable memory, a tensor built from host
values) stalls the host until the device has finished its queue, so the next step cannot
be queued behind this one. The CPU runs the same ops, so a dispatch mode that records them
here finds every such wait of the CUDA run; the copies are seen on the ``meta`` device
(another device, without data), where the batches of the loaders can be made too.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from gi_utils.data import (
    DeviceBatches,
    DevicePatches,
    GpuAugment,
    GpuAugment3d,
    PatchDataset,
    VolumeCache,
    build_metadata,
    build_transforms_3d,
    pack_masks,
    unpack_masks,
)
from gi_utils.training import DeviceLoader, EpochSampler, batch_generator

S = 64
#: Ops whose result the host needs before it can go on (their count or value is data).
READ_BACK = {"_local_scalar_dense", "item", "is_nonzero", "nonzero", "argwhere", "masked_select", "equal",
             "allclose", "unique", "_unique", "_unique2", "unique_consecutive", "unique_dim", "bincount",
             "_linalg_check_errors"}  # fmt: skip
#: Ops that turn host values into a tensor: a blocking host -> device copy on a GPU.
FROM_HOST = {"lift_fresh", "lift_fresh_copy"}


class HostWaits(TorchDispatchMode):
    """Records each op that makes the host wait for the device as ``"op (why)"`` in
    :attr:`found`; with ``from_host``, each tensor made from host values too (none should
    be made in the device's part of a batch; the host's part makes its index arrays)."""

    def __init__(self, from_host: bool = True) -> None:
        super().__init__()
        self.found: list[str] = []
        self.from_host = from_host

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        if name in READ_BACK:
            self.found.append(f"{name} (value read back)")
        elif name in FROM_HOST and self.from_host:
            self.found.append(f"{name} (tensor from host values)")
        elif name in ("index", "index_put", "index_put_", "_index_put_impl_"):
            indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
            if any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices):
                self.found.append(f"{name} (boolean mask: its count is read back)")
        elif name == "repeat_interleave" and kwargs.get("output_size") is None and len(args) < 3:
            self.found.append(f"{name} (output size read back)")
        elif name in ("_to_copy", "copy_") and not kwargs.get("non_blocking", False):
            src = args[1] if name == "copy_" else args[0]
            dst = args[0].device if name == "copy_" else kwargs.get("device", src.device)
            if isinstance(src, torch.Tensor) and dst is not None and torch.device(dst) != src.device:
                self.found.append(f"{name} {src.device} -> {dst} (blocking copy)")
        return func(*args, **kwargs)


def _waits(fn, from_host: bool = True) -> list[str]:
    fn()  # a first call may make the constants it caches (per device)
    with HostWaits(from_host) as mode:
        fn()
    return mode.found


def test_the_recorder_sees_the_waits_it_is_for():
    x = torch.rand(8)
    for fn, op in ((lambda: x[x > 0.5], "index (boolean"), (lambda: bool((x > 2).any()), "_local_scalar_dense"),
                   (lambda: torch.tensor([1, 2]), "lift_fresh"), (lambda: int(x.sum()), "_local_scalar_dense"),
                   (lambda: torch.linalg.inv(torch.eye(2)[None]), "_linalg_check_errors")):  # fmt: skip
        assert any(f.startswith(op) for f in _waits(fn)), op
    assert _waits(lambda: torch.where(x > 0.5, x, 0.0).amax()) == []
    assert _waits(lambda: x.to("meta"), from_host=False) == ["_to_copy cpu -> meta (blocking copy)"]
    assert _waits(lambda: x.to("meta", non_blocking=True)) == []


@pytest.fixture(scope="module")
def cache(synth_factory):
    meta = build_metadata(synth_factory(n_cases=2, seed=0, slices_per_scan=16, size=(64, 64)))
    return meta, VolumeCache(meta, S, None, progress=False, dtype="uint8", with_masks=True)


def test_the_2d_augmentation_never_waits():
    aug = GpuAugment(S, {name: {"p": 0.5} for name in ("Affine", "GridDistortion", "ElasticTransform")})
    images, packed = torch.rand(6, 3, S, S), torch.randint(0, 8, (6, S, S), dtype=torch.uint8)
    assert _waits(lambda: aug(images, packed, torch.Generator().manual_seed(1))) == []


def test_the_3d_augmentation_never_waits():
    aug = GpuAugment3d()
    images, packed = torch.rand(3, 1, 8, 32, 32), torch.randint(0, 8, (3, 8, 32, 32), dtype=torch.uint8)
    assert _waits(lambda: aug(images, packed, torch.Generator().manual_seed(1))) == []


def test_packing_masks_never_waits():
    packed = torch.randint(0, 8, (4, S, S), dtype=torch.uint8)
    assert _waits(lambda: pack_masks(unpack_masks(packed, axis=1), axis=1)) == []


@pytest.mark.parametrize("resident", [True, False], ids=["resident", "host"])
def test_a_device_loader_batch_never_waits(cache, resident):
    meta, vc = cache
    data = DeviceBatches(meta, vc, (-2, 0, 2), "cpu", resident=resident)
    loader = DeviceLoader(data, EpochSampler(np.zeros(len(data), bool), 5), 4, GpuAugment(S), 5)
    index = np.array([3, 0, 17, 9])
    assert _waits(lambda: loader.batch(1, 2, index), from_host=False) == []


@pytest.mark.parametrize("resident", [True, False], ids=["resident", "host"])
def test_a_3d_device_loader_batch_never_waits(cache, resident):
    meta, vc = cache
    patches = PatchDataset(meta, vc, 8, build_transforms_3d())
    data = DevicePatches(patches, vc, "cpu", 5, resident=resident)
    loader = DeviceLoader(data, EpochSampler(np.zeros(len(data), bool), 5), 2, GpuAugment3d(), 5)
    assert _waits(lambda: loader.batch(1, 0, np.array([1, 0])), from_host=False) == []


@pytest.mark.parametrize("resident", [True, False], ids=["resident", "host"])
def test_batches_reach_another_device_without_a_blocking_copy(cache, resident):
    """On ``meta`` (a device other than the host's): the index, the host store's
    gathered slices and the patches' padding flags are copied without waiting."""
    meta, vc = cache
    slices = DeviceBatches(meta, vc, (-2, 0, 2), "meta", resident=resident)
    images, _ = slices.gather(np.array([3, 0, 17]))
    assert images.device.type == "meta" and images.shape == (3, 3, S, S)
    assert _waits(lambda: slices.gather(np.array([3, 0, 17])), from_host=False) == []
    patches = DevicePatches(PatchDataset(meta, vc, 8, build_transforms_3d()), vc, "meta", 5, resident=resident)
    assert _waits(lambda: patches.gather(np.array([1, 0]), 2), from_host=False) == []


def test_the_batch_generator_is_made_without_waiting():
    assert _waits(lambda: torch.rand(3, generator=batch_generator(1, 2, 3, torch.device("cpu")))) == []
