"""``vidsift encode`` actors ask Ray for the GPUs there are (else Ray hides the GPU: they run on CPU)."""

from __future__ import annotations

import pytest

from vidsift.model.encode import actor_resources


def test_actor_resources():
    assert actor_resources(None, cluster_gpus=0, workers=3, files=10) == {"num_gpus": 0.0, "size": 3}
    assert actor_resources(None, cluster_gpus=2, workers=3, files=10) == {"num_gpus": 1.0, "size": 2}
    assert actor_resources(0.5, cluster_gpus=2, workers=8, files=10) == {"num_gpus": 0.5, "size": 4}
    assert actor_resources(None, cluster_gpus=8, workers=4, files=2) == {"num_gpus": 1.0, "size": 2}
    with pytest.raises(ValueError, match="cluster has 1"):
        actor_resources(2, cluster_gpus=1, workers=1, files=1)


@pytest.mark.slow
def test_encode_actors_request_the_clusters_gpu(tmp_path, monkeypatch):
    """On a Ray that has a GPU (declared: none is needed), the actor pool is built with ``num_gpus=1``."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray
    import ray.data

    from vidsift.model import encode

    (tmp_path / "clips").mkdir()
    pq.write_table(pa.table({"clip_id": ["a"]}), tmp_path / "clips" / "g000000.parquet")
    vae = tmp_path / "vae.safetensors"
    vae.write_bytes(b"not read: map_batches is stopped before any actor starts")
    seen: dict = {}

    class Stop(Exception):
        pass

    def capture(self, fn, **kwargs):
        seen.update(kwargs)
        raise Stop

    monkeypatch.setattr(ray.data.Dataset, "map_batches", capture)
    ray.init(address="local", num_cpus=1, num_gpus=1, include_dashboard=False, log_to_driver=False)
    try:
        with pytest.raises(Stop):
            encode.encode_shards(str(tmp_path), str(vae))
    finally:
        ray.shutdown()
    assert seen["num_gpus"] == 1.0 and seen["compute"].min_size == 1
