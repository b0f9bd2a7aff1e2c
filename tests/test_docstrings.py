"""Every ``>>>`` example in eventlab's docstrings runs, and shows what it says it shows.

An example that needs a running shop (a broker, service threads, HTTP ports) is marked
``# doctest: +SKIP``; the rest run here. Examples that read an event store find one at
``store_path``: the five-order history of ``projection_story.standard_story``, written fresh
for each module.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil
from pathlib import Path

import pytest
from projection_story import standard_story

import eventlab

MODULES = ["eventlab"] + sorted(
    info.name for info in pkgutil.walk_packages(eventlab.__path__, "eventlab.") if info.name != "eventlab.__main__"
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run_and_show_what_they_say(name: str, tmp_path: Path) -> None:
    # given a module, and a shop's event store for the examples that read one
    module = importlib.import_module(name)
    store_path = tmp_path / "events.db"
    standard_story(store_path).store.close()
    # when its examples run
    failed, _ = doctest.testmod(
        module,
        extraglobs={"store_path": store_path},
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
        report=False,
    )
    # then each one shows what its docstring says (doctest printed the difference above)
    assert failed == 0


def test_there_are_examples_to_run() -> None:
    # given every module of the package, when its examples are counted (skipped ones are not)
    attempted = sum(
        len([e for e in test.examples if not e.options.get(doctest.SKIP)])
        for name in MODULES
        for test in doctest.DocTestFinder().find(importlib.import_module(name))
    )
    # then the documentation's runnable examples did not quietly all turn into skips
    assert attempted >= 50
