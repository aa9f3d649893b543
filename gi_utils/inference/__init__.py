"""Inference: prediction of whole scans (2.5D stacks, 3-D sliding windows, flip TTA,
ensembles of both), the
post-processing shared with validation and the search, and the submission file."""

# Every public name of the stage, exported here only: each module's ``__all__``.
from gi_utils.inference.blending import *
from gi_utils.inference.postprocessing import *
from gi_utils.inference.predict import *
from gi_utils.inference.sliding_window import *
from gi_utils.inference.submission import *
from gi_utils.inference.timing import *
from gi_utils.inference import (blending, postprocessing, predict, sliding_window, submission,
    timing)

__all__ = [*blending.__all__, *postprocessing.__all__, *predict.__all__, *sliding_window.__all__,
    *submission.__all__, *timing.__all__]
