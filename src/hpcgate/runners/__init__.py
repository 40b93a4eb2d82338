"""Transports that run actions on a machine as the user."""

from hpcgate.runners.base import Completed, Limits, Runner
from hpcgate.runners.local import LocalRunner

__all__ = ["Completed", "Limits", "LocalRunner", "Runner"]
