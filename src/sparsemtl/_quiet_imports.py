"""Import torch's C++-extension helper once, without the line it logs on machines without a CUDA
toolkit ("No CUDA runtime is found"). Torch-Pruning and ``torch.utils.benchmark`` import it; on a
CPU machine the message is expected, and a stray stderr line would break the CLI's promise that
an error is exactly one line. Imported first by the package ``__init__``."""

from __future__ import annotations

import logging

_logger = logging.getLogger("torch.utils.cpp_extension")
_level = _logger.level
_logger.setLevel(logging.ERROR)
try:
    import torch.utils.cpp_extension  # noqa: F401
finally:
    _logger.setLevel(_level)
