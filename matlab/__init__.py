"""MatFormer Lab: a workbench for Gemma 3n MatFormer (Matryoshka Transformer) models."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("matformer-lab")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+source"
