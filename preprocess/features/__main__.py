"""``python -m preprocess.features``: see ``preprocess.features.cli``."""
import sys

from preprocess.features.cli import main

sys.exit(main())
