"""Transports that run actions on a machine as the user."""

from hpcgate.runners.base import Runner
from hpcgate.runners.local import LocalRunner

__all__ = ["LocalRunner", "Runner"]
