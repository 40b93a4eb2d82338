"""The dashboard's languages: message catalogs (TOML, one per language) and the choice of one.

Every user-facing string of the pages is a key looked up in the catalog of the request's
language; English is complete and the fallback for a key another catalog lacks.
``tests/web/test_pages.py`` checks that every catalog has every key the templates use.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import cache
from importlib import resources

DEFAULT = "en"
LANGUAGES = {"en": "English", "zh-CN": "简体中文"}
"""Each language's own name for itself, as the switch shows it."""
COOKIE = "hpcgate_lang"


@cache
def catalog(language: str) -> dict[str, str]:
    """The messages of ``language``, keyed by message id."""
    text = resources.files("hpcgate.web").joinpath(f"messages/{language}.toml").read_text("utf-8")
    messages = tomllib.loads(text)
    return {key: str(value) for key, value in messages.items()}


@dataclass(frozen=True)
class Translator:
    """The messages of one language, as templates call them: ``t("submit_job")``."""

    language: str

    def __call__(self, key: str, **values: object) -> str:
        text = catalog(self.language).get(key)
        if text is None:
            text = catalog(DEFAULT)[key]  # a KeyError here is a bug in a template
        return text.format(**values) if values else text


def negotiate(choice: str | None, accept_language: str | None) -> str:
    """The language to answer in: an explicit choice (the switch's cookie or ``?lang=``),
    else the best of the browser's ``Accept-Language`` that a catalog exists for."""
    if choice in LANGUAGES:
        return choice
    ranked: list[tuple[float, int, str]] = []
    for position, item in enumerate((accept_language or "").split(",")):
        tag, _, params = item.strip().partition(";")
        quality = 1.0
        if params.strip().startswith("q="):
            try:
                quality = float(params.strip()[2:])
            except ValueError:
                continue
        ranked.append((-quality, position, tag.strip().lower()))
    for _, _, tag in sorted(ranked):
        if tag == "en" or tag.startswith("en-"):
            return "en"
        # zh, zh-CN, zh-Hans, zh-SG: Simplified Chinese (the only Chinese catalog)
        if tag == "zh" or tag.startswith(("zh-cn", "zh-hans", "zh-sg")):
            return "zh-CN"
    return DEFAULT
