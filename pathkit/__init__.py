"""pathkit: build pathology multimodal assistants the way Quilt-LLaVA, PA-LLaVA, WSI-LLaVA and
HuatuoGPT-Vision did, tiny on a laptop CPU and paper-scale on GPUs.

Importing ``pathkit`` is cheap: subpackages load torch, openslide or PyAV only when used.
"""

from pathkit.config import Config, load_config
from pathkit.io import PathkitError

__version__ = "0.1.0"
__all__ = ["Config", "load_config", "PathkitError", "__version__"]
