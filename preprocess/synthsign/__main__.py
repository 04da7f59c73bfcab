"""``python -m preprocess.synthsign``: see ``preprocess.synthsign.cli``."""
import sys

from preprocess.synthsign.cli import main

sys.exit(main())
