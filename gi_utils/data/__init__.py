"""Data: the Kaggle layout read as it is (ids, file names, ``train.csv``, 16-bit slices),
run-length masks, folds, preprocessing shared with inference, the training augmentation,
the memory-mapped cache of preprocessed scans, the 2.5D dataset, the 3-D patch and scan
datasets, and the check that the workers' shared memory fits."""

# Every public name of the stage, exported here only: each module's ``__all__``.
from gi_utils.data.augment import *
from gi_utils.data.body_crop import *
from gi_utils.data.cache import *
from gi_utils.data.dataset import *
from gi_utils.data.device_batches import *
from gi_utils.data.device_patches import *
from gi_utils.data.errors import *
from gi_utils.data.folds import *
from gi_utils.data.gpu_augment import *
from gi_utils.data.gpu_augment_3d import *
from gi_utils.data.holdout import *
from gi_utils.data.images import *
from gi_utils.data.labels import *
from gi_utils.data.layout import *
from gi_utils.data.masks import *
from gi_utils.data.mixing import *
from gi_utils.data.names import *
from gi_utils.data.patches_3d import *
from gi_utils.data.preprocess import *
from gi_utils.data.rle import *
from gi_utils.data.shm import *
from gi_utils.data.tail import *
from gi_utils.data import (augment, body_crop, cache, dataset, device_batches, device_patches, errors, folds, gpu_augment,
    gpu_augment_3d, holdout, images, labels, layout, masks, mixing, names, patches_3d, preprocess, rle, shm, tail)

__all__ = [*augment.__all__, *body_crop.__all__, *cache.__all__, *dataset.__all__, *device_batches.__all__, *device_patches.__all__,
    *errors.__all__, *folds.__all__, *gpu_augment.__all__, *gpu_augment_3d.__all__, *holdout.__all__,
    *images.__all__, *labels.__all__, *layout.__all__, *masks.__all__, *mixing.__all__, *names.__all__, *patches_3d.__all__,
    *preprocess.__all__, *rle.__all__, *shm.__all__, *tail.__all__]
