"""Test-wide settings: offline, a throwaway cache, small thread pools, the dev data path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"

# Subprocesses (the CLI run as a user runs it) import this checkout, not whatever copy is installed.
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))

# The whole session on one intra-op thread: the models here are tiny, and one thread beats two on a
# shared CPU (set here, not in a test module, whose import would change it for every other module too).
torch.set_num_threads(1)


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    # Builds cache embeddings; tests must neither read a developer's cache nor leave one.
    os.environ["T5SHRINK_CACHE"] = str(tmp_path_factory.mktemp("t5shrink-cache"))
    yield


@pytest.fixture
def shared_data() -> Path:
    data = SHARED / "data"
    if not data.exists():
        pytest.skip("../shared/data (development data) is not present")
    return data
