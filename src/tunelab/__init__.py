"""tunelab: fine-tune, evaluate, govern and serve open models on your own hardware.

Importing this package does no work: heavy libraries (torch, transformers) are imported inside the
functions that need them, so `tunelab --help` answers instantly.
"""

from tunelab.errors import ConfigError, DataError, GateFailed, ModelError, TunelabError

__version__ = "0.1.0"

__all__ = ["ConfigError", "DataError", "GateFailed", "ModelError", "TunelabError", "__version__"]
