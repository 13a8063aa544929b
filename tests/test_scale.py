"""Growing past one machine: streamed features, few images per rank, multi-node torchrun."""

import numpy as np
import pytest
import torch

from capgen.features import FeatureCache, Features, extract_features
from capgen.features.split import StreamFeatures, split_megabytes
from capgen.training import load_run_config, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def features(prepared, tiny_encoder, tmp_path):
    extract_features(prepared, tmp_path / "feats", encoder=tiny_encoder, progress=False)
    return FeatureCache.open(tmp_path / "feats")


def test_streamed_batches_equal_ram_batches(prepared, features):
    records = prepared.split("train")
    ram, stream = Features.load(features, records), Features.load(features, records, memory_mb=0)
    assert isinstance(ram, Features) and isinstance(stream, StreamFeatures)
    assert (
        Features.load(features, records, memory_mb=int(split_megabytes(features, len(records))) + 1).__class__
        is Features
    )
    for rows in (torch.arange(len(records)), torch.tensor([5, 0, 3, 3, 17]), torch.tensor([2])):
        for a, b in zip(ram.batch(rows), stream.batch(rows)):
            assert a.dtype == b.dtype == torch.float32
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_truncated_cache_file_is_a_clear_error(prepared, features):
    stream = Features.load(features, prepared.split("train"), memory_mb=0)
    grid = features.root / "grid.npy"
    with open(grid, "r+b") as f:
        f.truncate(grid.stat().st_size // 2)
    with pytest.raises(Exception, match="truncated"):
        stream.batch(torch.arange(len(stream)))


def test_streaming_trains_the_same_model(prepared, features, tmp_path):
    sets = [
        "model.d_model=32",
        "model.num_layers=1",
        "model.num_heads=2",
        "model.ff_dim=64",
        "epochs=2",
        "batch_size=4",
        "warmup_steps=2",
    ]
    ram = train(load_run_config(None, sets, "transformer"), prepared, features, tmp_path / "ram", progress=False)
    stream = train(
        load_run_config(None, sets + ["feature_memory_mb=0"], "transformer"),
        prepared,
        features,
        tmp_path / "stream",
        progress=False,
    )
    for a, b in zip(ram.history, stream.history):
        assert a["train_loss"] == b["train_loss"] and a["CIDEr"] == b["CIDEr"]
    wa = torch.load(ram.best_checkpoint, weights_only=True)["state_dict"]
    wb = torch.load(stream.best_checkpoint, weights_only=True)["state_dict"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert np.isfinite(ram.history[-1]["train_loss"])


@pytest.mark.parametrize("n_images,world,batch", [(3, 2, 4), (5, 2, 4), (7, 3, 2), (2, 2, 16), (9, 1, 16)])
def test_every_rank_gets_the_same_number_of_batches(prepared, n_images, world, batch):
    """DDP all-reduces once per step: a rank with fewer batches than the others hangs them all."""
    from capgen.training.data import CaptionPairs

    pairs = CaptionPairs(prepared.split("train")[:n_images], prepared.vocab, 10)
    per_rank = [pairs.epoch_batches(0, 0, batch, rank, world) for rank in range(world)]
    assert len({len(b) for b in per_rank}) == 1 and len(per_rank[0]) >= 1
    images = [set(pairs.image_rows[b].tolist()) for bs in per_rank for b in bs]
    assert all(images) and sum(map(len, images)) == len(set().union(*images))  # no image twice in a step


def test_fewer_images_than_ranks_is_a_clear_error(prepared):
    from capgen.errors import CapgenError
    from capgen.training.data import CaptionPairs

    pairs = CaptionPairs(prepared.split("train")[:1], prepared.vocab, 10)
    with pytest.raises(CapgenError, match="1 images, fewer than the 2 processes"):
        pairs.epoch_batches(0, 0, 16, 1, 2)


def test_a_rendezvous_that_never_completes_times_out_with_a_message(tmp_path, prepared):
    """Rank 0 of 2 started alone: the CLI says so and exits 2 instead of waiting forever."""
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(sys.path),
        "WORLD_SIZE": "2",
        "RANK": "0",
        "LOCAL_RANK": "0",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "CAPGEN_DIST_TIMEOUT": "2",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "capgen", "extract", str(prepared.root), "--out", str(tmp_path / "f")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "could not join the process group at 127.0.0.1" in proc.stderr and "Traceback" not in proc.stderr


def _two_nodes(args: list[str], tmp_path, timeout: float = 300):
    """`torchrun --nnodes 2 --node-rank {0,1}` on this machine: two launchers, one worker each, meeting
    at a c10d rendezvous on 127.0.0.1 as two machines would at the first one's address."""
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes",
                "2",
                "--nproc-per-node",
                "1",
                "--node-rank",
                str(k),
                "--rdzv-backend",
                "c10d",
                "--rdzv-endpoint",
                f"127.0.0.1:{port}",
                "--rdzv-id",
                "capgen-test",
                *args,
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=tmp_path,
        )
        for k in (0, 1)
    ]
    outs = []
    for p in procs:
        try:
            outs.append(p.communicate(timeout=timeout))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    for p, (_out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-6000:]
    return outs


@pytest.mark.slow
def test_two_nodes_extract_train_and_bulk_caption(prepared, features, tiny_encoder, tmp_path):
    import json

    from capgen.data import prepare_dataset
    from capgen.data.synthetic import make_synthetic_dataset

    # a training split of 3 images over 2 ranks: smaller batches, never a hang
    few = prepare_dataset(make_synthetic_dataset(tmp_path / "few", n_images=5, seed=2), tmp_path / "fewp", min_count=1)
    assert len(few.split("train")) == 3
    _two_nodes(
        [
            "-m",
            "capgen",
            "extract",
            str(few.root),
            "--out",
            str(tmp_path / "fewf"),
            "--encoder",
            tiny_encoder,
            "--batch-size",
            "2",
        ],
        tmp_path,
    )
    assert len(FeatureCache.open(tmp_path / "fewf")) == 5
    _two_nodes(
        [
            "-m",
            "capgen",
            "train",
            "--data",
            str(few.root),
            "--features",
            str(tmp_path / "fewf"),
            "--model",
            "show_tell",
            "--out",
            str(tmp_path / "run"),
            "--set",
            "epochs=1",
            "--set",
            "batch_size=4",
            "--set",
            "model.embed_dim=16",
            "--set",
            "model.hidden_dim=32",
            "--set",
            "feature_memory_mb=0",
        ],
        tmp_path,
    )
    assert (tmp_path / "run" / "best.pt").is_file()
    photos = str(prepared.root.parent / "synth")
    _two_nodes(
        [
            "-m",
            "capgen",
            "caption",
            photos,
            "--model",
            str(tmp_path / "run" / "best.pt"),
            "--encoder",
            tiny_encoder,
            "--greedy",
            "--out",
            str(tmp_path / "caps.jsonl"),
        ],
        tmp_path,
    )
    lines = [json.loads(x) for x in (tmp_path / "caps.jsonl").read_text().splitlines()]
    assert len(lines) == len({d["image"] for d in lines}) == 30
    assert not list(tmp_path.glob("caps.jsonl.*part*"))  # parts merged and removed
