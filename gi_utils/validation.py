"""Validation of a training run: the competition metrics on whole validation volumes.

:func:`validate` runs the model over the validation loader (on every process), gathers the
predictions, puts them back into per-case-day volumes at model resolution and scores them
once with :func:`gi_utils.metrics.competition_score`. :func:`sync_buffers` makes a weight
average the same model on every process before it is validated.
"""

from __future__ import annotations

import numpy as np
import torch
from accelerate import Accelerator

from gi_utils.constants import CLASSES
from gi_utils.infer import drop_small_components
from gi_utils.progress import progress_bar
from gi_utils.train_data import PACK_BITS, TrainData, unpack_volume

__all__ = ["validate", "sync_buffers"]


@torch.no_grad()
def validate(
    acc: Accelerator, model, loader, loss_fn, data: TrainData, threshold: float, progress: bool,
    min_size: int = 0, memory_format: torch.memory_format = torch.contiguous_format,
) -> dict[str, float]:
    """Loss and competition metrics on the whole validation volumes (model resolution).

    ``min_size`` > 0 removes predicted components smaller than that many pixels (at model
    resolution) before scoring, the post-processing :func:`gi_utils.infer.postprocess`
    applies at inference.
    """
    from gi_utils.metrics import competition_score

    model.eval()
    bits = torch.tensor(PACK_BITS, dtype=torch.uint8, device=acc.device).view(1, -1, 1, 1)
    loss_stats = torch.zeros(2, dtype=torch.float64, device=acc.device)  # sum, count
    preds, trues, order = [], [], []
    for images, masks, index in progress_bar(loader, "valid", progress, leave=False):
        images, masks = images.float().contiguous(memory_format=memory_format), masks.float()
        with acc.autocast():  # an EMA model is not wrapped by accelerate.prepare
            logits = model(images).float()
        loss_stats[0] += loss_fn(logits, masks).double() * len(images)
        loss_stats[1] += len(images)
        pred = (logits.sigmoid() > threshold).to(torch.uint8)
        packed_pred = (pred * bits).sum(1, dtype=torch.uint8)  # (N, S, S), bit c = class c
        packed_true = (masks.to(torch.uint8) * bits).sum(1, dtype=torch.uint8)
        p, t, i = acc.gather_for_metrics((packed_pred, packed_true, index))
        preds.append(p.cpu().numpy())
        trues.append(t.cpu().numpy())
        order.append(i.cpu().numpy())
    total, count = acc.reduce(loss_stats, "sum").tolist()
    out = {"val_loss": total / max(count, 1.0)}
    if not acc.is_main_process:
        return out
    order_np = np.concatenate(order)
    pred_all = np.empty((len(data.val_ds), *preds[0].shape[1:]), np.uint8)
    true_all = np.empty_like(pred_all)
    pred_all[order_np], true_all[order_np] = np.concatenate(preds), np.concatenate(trues)
    pred_vol, true_vol = {}, {}
    for case_day, rows in data.val_volumes.items():
        pred_vol[case_day] = unpack_volume(pred_all[rows])
        if min_size > 1:
            pred_vol[case_day] = drop_small_components(pred_vol[case_day], min_size)
        true_vol[case_day] = unpack_volume(true_all[rows])
    res = competition_score(pred_vol, true_vol)
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
    import torch.distributed as dist

    for buffer in module.buffers():
        dist.broadcast(buffer.data, src=0)
