"""``python -m sparsemtl.studies STUDY_DIR CELL_ID``: the process a local study worker runs."""

import sys

from .cell import main

sys.exit(main())
