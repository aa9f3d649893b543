"""Models: the registry of architectures (:mod:`.registry`; the 3-D MONAI ones in
:mod:`.monai3d`), local encoder weights
(:mod:`.weights`) and saving/loading trained models with their config (:mod:`.io`), the run folder's name
and files (:mod:`.run_folder`), a new model initialised from an earlier run's weights (:mod:`.transfer`)."""

# Every public name of the stage, exported here only: each module's ``__all__``.
from gi_utils.models.io import *
from gi_utils.models.monai3d import *
from gi_utils.models.registry import *
from gi_utils.models.run_folder import *
from gi_utils.models.transfer import *
from gi_utils.models.weights import *
from gi_utils.models import (io, monai3d, registry, run_folder, transfer, weights)

__all__ = [*io.__all__, *monai3d.__all__, *registry.__all__, *run_folder.__all__, *transfer.__all__, *weights.__all__]
