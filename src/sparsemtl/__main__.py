"""``python -m sparsemtl`` is the ``sparsemtl`` command."""

import sys

from .cli import main

sys.exit(main())
