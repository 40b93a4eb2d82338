"""Plug-ins: schedulers, runners (transports) and authenticators, found by entry point.

hpcgate finds its parts the way JupyterHub finds authenticators and spawners: a package
registers a class under one of three entry-point groups, and the configuration names it.

===========================  ==================================  ============================
group                        configuration setting               the class implements
===========================  ==================================  ============================
``hpcgate.schedulers``       ``machines.NAME.scheduler``         ``schedulers.base.Scheduler``
``hpcgate.runners``          ``machines.NAME.runner``            ``runners.base.Runner``
``hpcgate.authenticators``   ``auth.backend``                    ``auth.base.Authenticator``
===========================  ==================================  ============================

Each class builds itself with a ``from_config`` class method; a wrong setting raises
:class:`~hpcgate.config.ConfigError` there, so ``hpcgate serve`` refuses it at start with
one line. hpcgate's own parts are registered the same way, in its ``pyproject.toml``.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from importlib.metadata import EntryPoint, entry_points
from typing import Any, TypeVar

SCHEDULERS = "hpcgate.schedulers"
RUNNERS = "hpcgate.runners"
AUTHENTICATORS = "hpcgate.authenticators"

T = TypeVar("T")


class PluginError(Exception):
    """A plug-in is not registered, or cannot be loaded."""


@cache
def _registered(group: str) -> dict[str, EntryPoint]:
    return {entry.name: entry for entry in entry_points(group=group)}


def registered(group: str) -> list[str]:
    """The names registered under ``group``, sorted."""
    return sorted(_registered(group))


def load(group: str, name: str) -> type[Any]:
    """The class registered as ``name`` under ``group``."""
    entry = _registered(group).get(name)
    if entry is None:
        known = ", ".join(registered(group)) or "none"
        raise PluginError(f"no {group} plug-in is called {name!r}; installed: {known}")
    try:
        loaded = entry.load()
    except Exception as exc:  # a broken third-party package: say which
        raise PluginError(
            f"the {group} plug-in {name!r} ({entry.value}) fails to load: {exc}"
        ) from exc
    if not isinstance(loaded, type):
        raise PluginError(f"the {group} plug-in {name!r} ({entry.value}) is not a class")
    return loaded


class BuildContext:
    """What plug-ins share while one gateway is built: objects made once per gateway.

    The SSH runners of several machines, for instance, share one certificate authority
    per CA key; it lives as long as the gateway that built it, not the process.
    """

    def __init__(self) -> None:
        self._shared: dict[object, object] = {}

    def shared(self, key: object, make: Callable[[], T]) -> T:
        """The object stored under ``key``, made by ``make()`` the first time."""
        if key not in self._shared:
            self._shared[key] = make()
        value: T = self._shared[key]  # type: ignore[assignment]
        return value
