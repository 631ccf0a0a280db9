"""tests/support/markers.py names tests that exist (a renamed test would silently leave test-fast)."""

from __future__ import annotations

import ast

import pytest

from tests.support.markers import ALL, SLOW_TESTS, TESTS


@pytest.mark.parametrize("module", sorted(SLOW_TESTS))
def test_every_listed_slow_test_exists(module: str) -> None:
    path = TESTS / module
    assert path.exists(), f"{module} is gone: strike it from tests/support/markers.py"
    defined = {n.name for n in ast.walk(ast.parse(path.read_text()))
               if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.name.startswith("test_")}
    missing = sorted(SLOW_TESTS[module] - {ALL} - defined)
    assert missing == [], f"{module} has no {missing}: update tests/support/markers.py"
