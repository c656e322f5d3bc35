"""attngen: a spec language and code generator for attention kernels.

Importing attngen does not import torch; only running ops (or references) does.
"""

from .api import AttentionOp, load, parse_and_check
from .errors import SpecError

__version__ = "0.1.0"
__all__ = ["AttentionOp", "SpecError", "load", "parse_and_check", "__version__"]
