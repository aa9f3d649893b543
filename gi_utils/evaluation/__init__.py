"""Evaluation: the competition metric, exact and fast (per-slice Dice, 3-D Hausdorff on
whole case-day volumes, their 0.4/0.6 mix), with the graders' variants as options."""

# Every public name of the stage, exported here only: each module's ``__all__``.
from gi_utils.evaluation.atlas import *
from gi_utils.evaluation.bootstrap import *
from gi_utils.evaluation.device_hausdorff import *
from gi_utils.evaluation.ensemble import *
from gi_utils.evaluation.hausdorff import *
from gi_utils.evaluation.holdout import *
from gi_utils.evaluation.metric import *
from gi_utils.evaluation.oof import *
from gi_utils.evaluation.search import *
from gi_utils.evaluation import atlas, bootstrap, device_hausdorff, ensemble, hausdorff, holdout, metric, oof, search

__all__ = [*atlas.__all__, *bootstrap.__all__, *device_hausdorff.__all__, *ensemble.__all__, *hausdorff.__all__, *holdout.__all__,
    *metric.__all__, *oof.__all__, *search.__all__]
