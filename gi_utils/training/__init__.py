"""Training: the config and its presets, the loaders of one fold, the resumable accelerate
loop with validation into out-of-fold files, and the multi-process launcher."""

# Every public name of the stage, exported here only: each module's ``__all__``.
from gi_utils.training.accelerator import *
from gi_utils.training.cli import *
from gi_utils.training.config import *
from gi_utils.training.determinism import *
from gi_utils.training.device_feed import *
from gi_utils.training.feed_plan import *
from gi_utils.training.launcher import *
from gi_utils.training.levers import *
from gi_utils.training.loaders import *
from gi_utils.training.loop import *
from gi_utils.training.presets import *
from gi_utils.training.probe import *
from gi_utils.training.run_levers import *
from gi_utils.training.run_plan import *
from gi_utils.training.sampler import *
from gi_utils.training.scaling import *
from gi_utils.training.schedule import *
from gi_utils.training.session import *
from gi_utils.training.step import *
from gi_utils.training.swa import *
from gi_utils.training.time_limit import *
from gi_utils.training.timed_run import *
from gi_utils.training.tracking import *
from gi_utils.training.validation import *
from gi_utils.training import (accelerator, cli, config, determinism, device_feed, feed_plan, launcher, levers, loaders, loop,
    presets, probe, run_levers, run_plan, sampler, scaling, schedule, session, step, swa, time_limit, timed_run,
    tracking, validation)

__all__ = [*accelerator.__all__, *cli.__all__, *config.__all__, *determinism.__all__, *device_feed.__all__, *feed_plan.__all__,
    *launcher.__all__, *levers.__all__, *loaders.__all__, *loop.__all__, *presets.__all__, *probe.__all__,
    *run_levers.__all__, *run_plan.__all__, *sampler.__all__, *scaling.__all__, *schedule.__all__,
    *session.__all__, *step.__all__, *swa.__all__, *time_limit.__all__, *timed_run.__all__, *tracking.__all__,
    *validation.__all__]
