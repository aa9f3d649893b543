"""Synthetic data: a phantom of abdominal MRI written in the exact Kaggle layout (plan,
render, write), so every path of the project runs without the real data."""

# Every public name of the stage, exported here only: each module's ``__all__``.
from gi_utils.synthetic.generate import *
from gi_utils.synthetic.phantom import *
from gi_utils.synthetic.spec import *
from gi_utils.synthetic import generate, phantom, spec

__all__ = [*generate.__all__, *phantom.__all__, *spec.__all__]
