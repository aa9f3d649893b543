"""gi_utils: the tested package behind the GI-tract segmentation notebooks.

Stages, each a subpackage: ``data`` (Kaggle layout, RLE, folds, preprocessing, cache,
datasets), ``synthetic`` (the phantom dataset), ``evaluation`` (the competition metric,
out-of-fold sets), ``inference`` (prediction, post-processing, submission), ``training``
(config and presets, loaders, the loop, launcher), ``report`` (runs, tables, figures) and
``pipeline`` (notebook glue, the demo, the docs). Shared basics sit at the top:
``constants``, ``paths``, ``atomic``, ``checkpoint``, ``device``, ``progress``, ``losses``
and ``models``.
"""
