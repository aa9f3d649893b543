"""Validation of a training run: out-of-fold probabilities and the competition metric on
whole validation volumes.

:func:`validate` runs the model over the validation loader (on every process), gathers the
predictions on the main process and writes them, memory-mapped, as an out-of-fold set
(:mod:`gi_utils.evaluation.oof`): probabilities as uint8 (``round(255 p)``) at model
resolution, the packed true masks and, with a classifier gate, the gate's probabilities.
The score is then computed volume by volume from those files through the same
:class:`~gi_utils.inference.postprocessing.PostProcess` that inference and the search use,
so nothing of the validation set is held in memory at once; on a GPU its 3-D Hausdorff is
computed there (``method="torch"``, exact: :mod:`gi_utils.evaluation.device_hausdorff`),
not by the CPU k-d tree while the GPU waits. The batches come from a DataLoader (the worker
path) or from the slices on the device (:class:`~gi_utils.training.device_feed.DeviceValLoader`,
the same batches in the same order). :func:`sync_buffers` makes a weight average the same
model on every process before it is validated.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
from accelerate import Accelerator

from gi_utils.constants import CLASSES
from gi_utils.data.masks import pack_masks
from gi_utils.evaluation.oof import OOFWriter, score_oof
from gi_utils.inference.postprocessing import PostProcess
from gi_utils.inference.sliding_window import SlidingWindow, sliding_logits
from gi_utils.models.registry import split_outputs
from gi_utils.progress import progress_bar
from gi_utils.training.device_feed import DeviceValLoader
from gi_utils.training.loaders import TrainData

__all__ = ["validate", "sync_buffers"]


@torch.no_grad()
def validate(
    acc: Accelerator,
    model,
    loader,
    loss_fn,
    data: TrainData,
    post: PostProcess,
    oof_dir: str | Path,
    *,
    progress: bool = True,
    memory_format: torch.memory_format = torch.contiguous_format,
    sliding: tuple[int, SlidingWindow] | None = None,
    hausdorff_device: torch.device | None = None,
) -> dict[str, float]:
    """Loss and competition metrics on the whole validation volumes (model resolution).

    2.5D: batches of slices ``(images, masks, rows)``. 3-D (``sliding=(patch_depth,
    SlidingWindow)``): one whole scan per batch, ``(image (1, 1, D, S, S), masks (1, 3, D,
    S, S), rows (1, D))``, predicted by sliding windows; its slices are then written like
    a 2.5D batch (scans differ in depth between processes: they are padded to be gathered).

    ``loader``: a prepared DataLoader, or a :class:`DeviceValLoader` (its rows ``-1``, a
    process's padding, are dropped after the gather and left out of the loss).

    The out-of-fold files are written to ``oof_dir`` (a temporary folder: the caller
    keeps them when the epoch is the best so far). Only the main process writes and
    scores; the others return the loss alone. ``hausdorff_device``: score the Hausdorff
    in torch there (the run's GPU); ``None``: the CPU k-d tree.
    """
    model.eval()
    loss_stats = torch.zeros(2, dtype=torch.float64, device=acc.device)  # sum, count
    writer = None
    if acc.is_main_process:
        ds = data.val_ds
        writer = OOFWriter(oof_dir, ds.meta, data.val_volumes, ds.img_size, data.split)
    for images, masks, index in progress_bar(loader, "valid", progress, leave=False):
        images, masks = images.float().contiguous(memory_format=memory_format), masks.float()
        with acc.autocast():  # an EMA model is not wrapped by accelerate.prepare
            if sliding is None:
                seg, gate = split_outputs(model(images))
            else:
                seg, gate = sliding_logits(model, images, *sliding), None
        seg = seg.float()
        n = (index >= 0).sum()  # slices in the batch (a device loader's padding: -1)
        loss_stats[0] += loss_fn(seg, masks).double() * n
        loss_stats[1] += n
        if sliding is not None:  # (1, 3, D, S, S) -> D slices (D, 3, S, S)
            seg, masks, index = seg[0].transpose(0, 1), masks[0].transpose(0, 1), index[0]
        probs = (seg.sigmoid() * 255).round().to(torch.uint8)  # (N, 3, S, S)
        truth = pack_masks(masks.to(torch.uint8), axis=1)  # (N, S, S)
        gate_p = gate.float().sigmoid() if gate is not None else torch.zeros(len(probs), 0, device=acc.device)
        if sliding is None and not isinstance(loader, DeviceValLoader):
            p, t, g, i = acc.gather_for_metrics((probs, truth, gate_p, index))
        else:  # padded rows are marked -1; a scan repeated to even out the processes is written twice
            p, t, g, i = acc.gather(acc.pad_across_processes((probs, truth, gate_p, index), pad_index=-1))
            keep = i >= 0
            p, t, g, i = p[keep], t[keep], g[keep], i[keep]
        if writer is not None:
            writer.write(i.cpu().numpy(), p.cpu().numpy(), t.cpu().numpy(),
                         g.cpu().numpy() if gate is not None else None)  # fmt: skip
    total, count = acc.reduce(loss_stats, "sum").tolist()
    out = {"val_loss": total / max(count, 1.0)}
    if writer is None:
        return out
    writer.close()
    scoring = {"method": "torch", "device": hausdorff_device} if hausdorff_device is not None else {}
    res = score_oof(oof_dir, post, **scoring)
    out.update(
        val_dice=float(res.dice), val_hausdorff=float(res.hausdorff), val_score=float(res.score)
    )
    for name in CLASSES:
        out[f"dice_{name}"] = float(res.per_class.loc[name, "dice"])
    return out


def sync_buffers(module: torch.nn.Module) -> None:
    """Give every process rank 0's buffers of ``module`` (an EMA model).

    DDP broadcasts rank 0's BatchNorm statistics at every forward, so the other ranks'
    copies drift between steps and so do the averages they feed; the model that is
    validated (and saved by rank 0) must be the same on all ranks, also after a resume.
    """
    for buffer in module.buffers():
        dist.broadcast(buffer.data, src=0)
