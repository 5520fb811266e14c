import os

import pytest

from vidsift.model.synthetic import write_synthetic_shards

# Keep torch to the two cores of CI machines and make CPU results reproducible run to run.
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def shards(tmp_path_factory) -> str:
    """A curation run folder with 24 synthetic captioned clips (2 files, row groups of 4)."""
    out = tmp_path_factory.mktemp("run")
    write_synthetic_shards(str(out), 24, files=2, rows_per_group=4, frames=20, size=48)
    return str(out)
