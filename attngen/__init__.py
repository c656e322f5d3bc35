"""attngen: a spec language and code generator for attention kernels.

Importing attngen imports neither torch nor the parser: ``attngen.runtime`` (what generated
modules use) stays light, and the API (``load``, ``parse_and_check``, ``AttentionOp``) loads on
first use.
"""

from .errors import SpecError

__version__ = "0.1.0"
__all__ = ["AttentionOp", "SpecError", "document_ids", "load", "parse_and_check", "__version__"]


def __getattr__(name: str):
    if name in ("AttentionOp", "document_ids", "load", "parse_and_check"):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'attngen' has no attribute {name!r}")
