"""Shared fixtures: no network, a private datasets cache, and the real data beside the checkout."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = REPO_ROOT.parent / "shared"

# Nothing in the suite may reach a hub: set before datasets/transformers are imported by any test.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True, scope="session")
def _private_datasets_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Keep the datasets cache of the suite away from the user's ~/.cache."""
    os.environ["HF_DATASETS_CACHE"] = str(tmp_path_factory.mktemp("hf_datasets_cache"))
    import datasets

    datasets.config.HF_DATASETS_CACHE = Path(os.environ["HF_DATASETS_CACHE"])


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """``../shared`` beside the checkout (real VidSTG annotations and clips)."""
    if not SHARED_DIR.is_dir():
        pytest.skip(f"real test data not found at {SHARED_DIR} (CI places ../shared beside the checkout)")
    return SHARED_DIR
