"""Report: reading run folders, the results table, figures (overlays, curves, EDA) and the
comparison of models on the same validation slices."""

# Every public name of the stage, exported here only: each module's ``__all__``.
from gi_utils.report.atlas import *
from gi_utils.report.compare import *
from gi_utils.report.decisions import *
from gi_utils.report.eda import *
from gi_utils.report.holdout import *
from gi_utils.report.lessons import *
from gi_utils.report.plotting import *
from gi_utils.report.previews import *
from gi_utils.report.runs import *
from gi_utils.report.selection import *
from gi_utils.report.tables import *
from gi_utils.report import (atlas, compare, decisions, eda, holdout, lessons, plotting, previews, runs, selection,
    tables)

__all__ = [*atlas.__all__, *compare.__all__, *decisions.__all__, *eda.__all__, *holdout.__all__, *lessons.__all__,
    *plotting.__all__, *previews.__all__,
    *runs.__all__, *selection.__all__, *tables.__all__]
