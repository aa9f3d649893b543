"""Inference: prediction of whole scans (2.5D stacks, flip TTA, ensembles), the
post-processing shared with validation and the search, and the submission file."""

# Every public name of the stage, exported here only: each module's ``__all__``.
from gi_utils.inference.postprocessing import *
from gi_utils.inference.predict import *
from gi_utils.inference.submission import *
from gi_utils.inference import postprocessing, predict, submission

__all__ = [*postprocessing.__all__, *predict.__all__, *submission.__all__]
