"""``python -m gi_utils.synthetic OUT --cases N ...`` (the same as ``gi-synth``)."""

from gi_utils.synthetic.generate import main

raise SystemExit(main())
