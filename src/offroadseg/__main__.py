"""``python -m offroadseg`` runs the command line."""

import sys

from offroadseg.cli import main

sys.exit(main())
