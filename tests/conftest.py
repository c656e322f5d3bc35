"""Shared test fixtures: where the repository and its example specs are, and one private attngen
cache for the whole session."""

from __future__ import annotations

from pathlib import Path

import pytest

import attngen.cache

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def examples_dir() -> Path:
    return REPO_ROOT / "examples"


@pytest.fixture(scope="session", autouse=True)
def attngen_cache_dir(tmp_path_factory) -> Path:
    """ATTNGEN_CACHE_DIR for the session: a private directory (never the user's cache), shared by
    the test modules, so each spec is rendered once per run (black formats a module in seconds)
    and later modules load it from the cache. Tests of the cache itself (test_build.py) set
    their own directories."""
    root = tmp_path_factory.mktemp("attngen-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ATTNGEN_CACHE_DIR", str(root))
        attngen.cache.cache_root.cache_clear()
        yield root
    attngen.cache.cache_root.cache_clear()
