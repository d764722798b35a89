"""mrisr: diffusion-model super-resolution of brain MRI."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mrisr")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.1.0+src"
