"""Pipeline: the notebooks' glue (parameter checks, the data root, 02's config), the
series run headlessly (``make demo``, which a second call continues), the notebooks as
HTML documents and ``make docs``, and the ablation of the winners' levers (``make ablation``)."""

# Every public name of the stage, exported here only: each module's ``__all__``.
from gi_utils.pipeline.ablation import *
from gi_utils.pipeline.cv import *
from gi_utils.pipeline.data_root import *
from gi_utils.pipeline.docs import *
from gi_utils.pipeline.kaggle import *
from gi_utils.pipeline.notebook import *
from gi_utils.pipeline.notebook_files import *
from gi_utils.pipeline.params import *
from gi_utils.pipeline.publish import *
from gi_utils.pipeline.series import *
from gi_utils.pipeline.sessions import *
from gi_utils.pipeline.submit import *
from gi_utils.pipeline import (ablation, cv, data_root, docs, kaggle, notebook, notebook_files, params,
    publish, series, sessions, submit)

__all__ = [*ablation.__all__, *cv.__all__, *data_root.__all__, *docs.__all__, *kaggle.__all__, *notebook.__all__,
    *notebook_files.__all__, *params.__all__, *publish.__all__, *series.__all__, *sessions.__all__,
    *submit.__all__]
