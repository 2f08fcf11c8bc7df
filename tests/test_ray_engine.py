"""`herbaria index --engine ray`: the index stage on Ray Data (local Ray, 2 CPUs, tiny encoder).

One Ray session for the module: starting Ray costs several seconds on 2 cores.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ray = pytest.importorskip("ray", reason="Ray is not installed (optional extra: pip install -e '.[ray]')")

from herbaria.cli import main  # noqa: E402
from retrieval.collections import Collection  # noqa: E402
from retrieval.vectors import SpecimenIndex, build_index, create_encoder  # noqa: E402
from retrieval.vectors.ray_engine import read_shards, shard_dir  # noqa: E402

N_SHEETS = 20


def _source(root: Path) -> Path:
    """JPEG and PNG sheets with labels."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(3)
    with open(root / "labels.csv", "w", newline="") as handle:
        w = csv.writer(handle)
        w.writerow(["file", "scientificName", "catalogNumber"])
        for i in range(N_SHEETS):
            name = f"sheet{i}.{'png' if i % 5 == 0 else 'jpg'}"
            Image.fromarray(rng.integers(0, 255, (96, 72, 3), dtype=np.uint8)).save(root / name)
            w.writerow([name, "Rosa canina", f"R{i:03d}"])
    return root


@pytest.fixture(scope="module")
def ray_session():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def collections(tmp_path_factory, ray_session) -> tuple[Path, Path]:
    """The same collection twice: indexed in process, and on Ray in shards of 4 specimens."""
    tmp = tmp_path_factory.mktemp("rayidx")
    assert main(["ingest", str(_source(tmp / "source")), "--out", str(tmp / "local"), "--quiet"]) == 0
    shutil.copytree(tmp / "local", tmp / "ray")
    build_index(tmp / "local", model="tiny-test", progress=False, device="cpu")
    summary = build_index(tmp / "ray", model="tiny-test", device="cpu", engine="ray", batch_size=4, chunk_size=4,
                          progress=False)
    assert summary["encoded"] == summary["added"] == N_SHEETS and summary["engine"] == "ray"
    return tmp / "local", tmp / "ray"


def _vectors(folder: Path) -> dict[int, np.ndarray]:
    index = SpecimenIndex.load(folder / "index")
    return {int(i): index.vector(int(i)) for i in index.ids()}


def test_ray_vectors_equal_the_in_process_ones(collections):
    local, ray_col = collections
    expected, got = _vectors(local), _vectors(ray_col)
    assert len(expected) == N_SHEETS and sorted(got) == sorted(expected)
    cosine = np.array([float(expected[i] @ got[i]) for i in expected])
    assert cosine.min() > 0.999, cosine


def test_shards_hold_every_vector_and_a_lost_index_resumes_from_them(collections):
    _, ray_col = collections
    col = Collection.open(ray_col)
    shards = shard_dir(col, create_encoder("tiny-test", device="cpu"))
    ids, vectors = read_shards(shards)
    assert sorted(ids.tolist()) == sorted(_vectors(ray_col)) and vectors.shape == (N_SHEETS, 64)
    shard_files = sorted(shards.glob("ids-*.npy"))
    assert len(shard_files) >= 2  # blocks of chunk_size rows, one shard each
    lost = np.load(shard_files[0])
    shard_files[0].unlink()  # one shard was never committed: only its specimens are encoded again
    shutil.rmtree(ray_col / "index")
    summary = build_index(ray_col, model="tiny-test", device="cpu", engine="ray", batch_size=4, chunk_size=4,
                          progress=False)
    assert summary["encoded"] == len(lost) and summary["resumed_from_shards"] == N_SHEETS - len(lost)
    assert summary["total"] == N_SHEETS and summary["added"] == N_SHEETS
    again = build_index(ray_col, model="tiny-test", device="cpu", engine="ray", progress=False)
    assert again["encoded"] == 0 and again["added"] == 0 and again["total"] == N_SHEETS


def test_cli_engine_option_reaches_the_ray_stage(collections, capsys):
    _, ray_col = collections
    assert main(["index", str(ray_col), "--engine", "ray", "--device", "cpu", "--json"]) == 0
    printed = capsys.readouterr().out
    assert '"engine": "ray"' in printed and '"encoded": 0' in printed


def test_unknown_engine_is_refused(collections):
    from retrieval.errors import BadInput

    with pytest.raises(BadInput, match="unknown engine"):
        build_index(collections[1], model="tiny-test", engine="spark")
