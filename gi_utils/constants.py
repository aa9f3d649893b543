"""Constants of the competition and the project, defined once and imported everywhere.

The class order is the order of the rows in ``train.csv`` and of the mask channels
everywhere in this package: channel 0 = large bowel, 1 = small bowel, 2 = stomach.
Swapping the two bowels is the classic bug of public code for this competition, so no
other module spells these names out.
"""

from __future__ import annotations

#: Class names in ``train.csv`` order; also the channel order of every mask array.
CLASSES: tuple[str, ...] = ("large_bowel", "small_bowel", "stomach")
NUM_CLASSES: int = len(CLASSES)
CLASS_INDEX: dict[str, int] = {name: i for i, name in enumerate(CLASSES)}

#: Overlay colours (RGB, 0-1) per class, in class order.
CLASS_COLORS: tuple[tuple[float, float, float], ...] = (
    (1.0, 0.85, 0.0),  # large bowel: yellow
    (0.0, 0.8, 0.2),  # small bowel: green
    (0.9, 0.1, 0.1),  # stomach: red
)

#: Columns of train.csv and of a submission.
TRAIN_CSV_COLUMNS: tuple[str, ...] = ("id", "class", "segmentation")
SUBMISSION_COLUMNS: tuple[str, ...] = ("id", "class", "predicted")

#: Environment variable that names the data root.
DATA_DIR_ENV: str = "GI_DATA_DIR"
#: Environment variable that moves the platform mounts below (``/kaggle/...``,
#: ``/content/...``) under another root: the platform stand-ins of the tests set it, and
#: the notebooks' setup cell reads the same variable. Unset: ``/``.
PLATFORM_ROOT_ENV: str = "GI_PLATFORM_ROOT"
#: The competition's name on Kaggle.
KAGGLE_COMPETITION: str = "uw-madison-gi-tract-image-segmentation"
#: Kaggle's mounts, relative to the platform root: attached datasets and competitions
#: (read-only) and the notebook's own writable output folder.
KAGGLE_INPUT_REL: str = "kaggle/input"
KAGGLE_WORKING_REL: str = "kaggle/working"
#: What Kaggle saves of ``/kaggle/working`` as a notebook's output, at most (about 20 GB).
KAGGLE_OUTPUT_BYTES: int = 20 * 10**9
#: Writable scratch folders of a Kaggle session, not saved with its output (tried in order).
KAGGLE_SCRATCH_RELS: tuple[str, ...] = ("kaggle/temp", "tmp")
#: Colab's local disk (lost when the runtime is recycled) and the Google Drive mount,
#: relative to the platform root.
COLAB_CONTENT_REL: str = "content"
COLAB_DRIVE_REL: str = "content/drive/MyDrive"
#: On Drive: where a Colab user keeps the competition data, and the project's runs.
COLAB_DATA_DIRNAME: str = KAGGLE_COMPETITION
COLAB_RUNS_REL: str = "gi-tract-segmentation/runs"
#: Local fallback folder name (relative to the working directory, then the repository).
LOCAL_DATA_DIRNAME: str = "data"
#: Environment variable that names the folder of run folders (checkpoints, caches, results).
RUNS_DIR_ENV: str = "GI_RUNS_DIR"

#: Real image sizes in the training set as (width, height) with their pixel spacing (mm)
#: and number of slices in train.
REAL_SIZES: tuple[tuple[int, int, float, int], ...] = (
    (266, 266, 1.50, 25_920),
    (360, 310, 1.50, 11_232),
    (276, 276, 1.63, 1_200),
    (234, 234, 1.50, 144),
)
#: Slice thickness in mm (the Hausdorff metric uses depth 1 per slice regardless).
SLICE_THICKNESS_MM: float = 3.0
#: Number of slices per scan in the real data.
SLICES_PER_SCAN: tuple[int, ...] = (80, 144)
#: Full size of the real training set, used by the scale benchmark.
REAL_TRAIN_SLICES: int = 38_496

#: Metric weights: score = DICE_WEIGHT * dice + HAUSDORFF_WEIGHT * (1 - hausdorff).
DICE_WEIGHT: float = 0.4
HAUSDORFF_WEIGHT: float = 0.6

#: Case-days with known annotation problems that strong solutions drop from training.
BAD_CASE_DAYS: tuple[str, ...] = ("case7_day0", "case81_day30")
