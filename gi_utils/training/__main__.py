"""``python -m gi_utils.training ...``: see :mod:`gi_utils.training.cli`."""

import sys

from gi_utils.training.cli import main

sys.exit(main())
