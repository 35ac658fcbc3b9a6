"""Data-parallel training: 2 gloo processes on the CPU train like one process on the same global
batches (SAM, GraphSAM), every rank holds the same weights and optimizer state, a run stopped
and resumed ends where an uninterrupted one does, and ``graphsam train --nproc-per-node 2``
starts it through torchrun."""
import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp

from graphsam_ext.errors import UserError
from graphsam_ext.train import TrainConfig
from graphsam_ext.train.distributed import (check_shardable, shard, strip_launch_options, torchrun_command)
from graphsam_ext.train.experiment import load_data, split_for_seed
from graphsam_ext.train.loop import SeedRun
from test_train import write_tiny_csv

WORLD = 2
# float32 weights after 2 epochs of 4 Adam-based steps: DDP adds the two shards' gradients in
# another order than one process adds the whole batch's, a difference of float32 rounding in
# each gradient. Measured: every weight within 2e-6, the Adam moments within 2e-5 of their
# size, the weights' distance 0.1% of the distance they moved. Checked: element-wise within
# ATOL, the weights' distance under REL of the distance moved, each moment under REL_STATE.
# GAUGE: the attention key projection's bias, whose gradient is zero in exact arithmetic (the
# softmax over a node's edges ignores the score shift q_i . b shared by all of them): Adam
# normalizes its rounding noise into full-size steps of either sign (measured: 1.9e-4 apart), so
# it is left out of the element-wise and moment checks (the distance check still counts it).
ATOL, REL, REL_STATE = 1e-5, 1e-2, 1e-3
GAUGE = "lin_key.bias"
RUNS = {"sam": dict(optimizers=["sam"]), "graphsam": dict(optimizers=["graphsam"]),
        "sam-local": dict(optimizers=["sam"], local_perturbation=True)}


def _config(csv, **kw):
    # 32 molecules, 26 in training: batches of 7 split 3 + 4 over the ranks (the last, 5: 2 + 3); one label is missing,
    # so the shards' losses must be weighted by their label counts; no dropout, whose masks
    # depend on how a batch is split, and no pooled BatchNorm, whose batch statistics do too
    cfg = dict(data_path=str(csv), smiles_column="mol", target_columns=["solubility", "logp"], split="random",
               epochs=3, seeds=1, batch_size=7, hidden=16, layers=1, heads=2, edge_hidden=8, dropout=0.0,
               schedule="constant", rho=0.2, pool_norm=False)
    cfg.update(kw)
    return TrainConfig(**cfg)


def _train(cfg, dataset, run_dir, epochs, dist=None):
    data = split_for_seed(cfg, dataset, cfg.first_seed, run_dir, write=dist is None or dist.is_main)
    runner = SeedRun(cfg, cfg.optimizers[0], cfg.first_seed, data, run_dir / cfg.optimizers[0], "cpu", dist=dist)
    runner.run(stop_after_epochs=epochs)
    return runner


def _snapshot(runner) -> dict:
    opt = runner.optimizer.state_dict()
    names = [name for name, _ in runner.model.named_parameters()]  # the optimizer's parameter order
    return {"model": {k: v.clone() for k, v in runner.model.state_dict().items()},
            "state": {names[k]: {n: t.clone() for n, t in st.items() if torch.is_tensor(t)}
                      for k, st in opt["state"].items()},
            "history_loss": [h["train_loss"] for h in runner.history],
            "val": [h["val"] for h in runner.history]}


def _worker(rank, port, csv, out, jobs):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from graphsam_ext.train.distributed import from_environment

    dist = from_environment(torch.device("cpu"))
    try:
        for name, run_dir, epochs in jobs:
            cfg = _config(csv, **RUNS[name])
            runner = _train(cfg, load_data(cfg), run_dir, epochs, dist)
            torch.save(_snapshot(runner), out / f"{name}-{run_dir.name}-rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(csv, out, jobs):
    mp.spawn(_worker, args=(_free_port(), csv, out, jobs), nprocs=WORLD, join=True)


def _assert_equal(a, b):
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert a["state"].keys() == b["state"].keys()
    for k in a["state"]:
        for n in a["state"][k]:
            assert torch.equal(a["state"][k][n], b["state"][k][n]), (k, n)


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory):
    """One spawn trains every configuration 2 epochs; two more stop after epoch 1 and resume."""
    root = tmp_path_factory.mktemp("ddp")
    csv = write_tiny_csv(root / "tiny.csv")
    out = root / "snapshots"
    out.mkdir()
    jobs = [(name, root / f"full-{name}", 2) for name in RUNS]
    jobs += [("sam", root / "resumed-sam", 1), ("graphsam", root / "resumed-graphsam", 1)]
    _spawn(csv, out, jobs)
    _spawn(csv, out, [("sam", root / "resumed-sam", 2), ("graphsam", root / "resumed-graphsam", 2)])
    load = lambda name, run, rank: torch.load(out / f"{name}-{run}-rank{rank}.pt")  # noqa: E731
    return csv, root, load


@pytest.mark.parametrize("name", ["sam", "graphsam"])
def test_ddp_equals_one_process_on_the_same_global_batch(ddp_runs, name, tmp_path):
    csv, root, load = ddp_runs
    cfg = _config(csv, **RUNS[name])
    single = _snapshot(_train(cfg, load_data(cfg), tmp_path, 2))
    ranks = [load(name, f"full-{name}", r) for r in range(WORLD)]
    _assert_equal(ranks[0], ranks[1])  # every rank holds the same weights and optimizer state, bit for bit
    start = _snapshot(_train(cfg, load_data(cfg), tmp_path / "start", 0))
    moved = max((single["model"][k] - start["model"][k]).abs().max().item() for k in single["model"])
    assert moved > 1e-3
    for k, v in single["model"].items():
        if not k.endswith(GAUGE):
            torch.testing.assert_close(ranks[0]["model"][k], v, rtol=0, atol=ATOL)
    flat = lambda d: torch.cat([t.reshape(-1).double() for t in d.values()])  # noqa: E731
    gap = (flat(ranks[0]["model"]) - flat(single["model"])).norm()
    assert gap <= REL * (flat(single["model"]) - flat(start["model"])).norm()
    for k in single["state"]:
        for n, v in single["state"][k].items():
            if v.dim() == 0:  # step counters
                assert torch.equal(ranks[0]["state"][k][n], v)
            elif not k.endswith(GAUGE):
                assert (ranks[0]["state"][k][n] - v).double().norm() <= REL_STATE * v.double().norm() + 1e-12, (k, n)
    assert ranks[0]["val"] == ranks[1]["val"]
    assert ranks[0]["history_loss"] == pytest.approx(single["history_loss"], rel=1e-4)


@pytest.mark.parametrize("name", ["sam", "graphsam"])
def test_a_stopped_and_resumed_ddp_run_ends_where_an_uninterrupted_one_does(ddp_runs, name):
    _, root, load = ddp_runs
    for rank in range(WORLD):
        _assert_equal(load(name, f"resumed-{name}", rank), load(name, f"full-{name}", rank))
    # only rank 0 wrote the checkpoints
    assert (root / f"resumed-{name}" / name / "last.pt").is_file()
    assert torch.load(root / f"resumed-{name}" / name / "last.pt", weights_only=True)["world_size"] == WORLD


def test_local_perturbation_keeps_the_ranks_identical_and_changes_the_step(ddp_runs):
    _, _, load = ddp_runs
    local = [load("sam-local", "full-sam-local", r) for r in range(WORLD)]
    _assert_equal(local[0], local[1])
    synced = load("sam", "full-sam", 0)
    assert any(not torch.equal(local[0]["model"][k], synced["model"][k]) for k in synced["model"])


def test_cli_nproc_per_node_launches_torchrun_and_resumes(tmp_path):
    csv = write_tiny_csv(tmp_path / "tiny.csv")
    run_dir = tmp_path / "run"
    base = [sys.executable, "-m", "graphsam_ext.cli"]
    common = ["--device", "cpu", "--num-threads", "1", "--quiet"]
    train = ["train", "--data-path", str(csv), "--smiles-column", "mol", "--target-columns", "solubility", "logp",
             "--optimizers", "graphsam", "--epochs", "1", "--seeds", "1", "--batch-size", "7", "--hidden", "16",
             "--layers", "1", "--heads", "2", "--edge-hidden", "8", "--output-dir", str(run_dir),
             "--nproc-per-node", str(WORLD), *common]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(base + train, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "torch.distributed.run" in done.stderr
    first = json.loads((run_dir / "results.json").read_text())
    assert first["results"]["graphsam"]["0"]["epochs_run"] == 1
    resumed = subprocess.run(base + ["train", "--resume", str(run_dir), "--epochs", "2", "--nproc-per-node",
                                     str(WORLD), *common], env=env, capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    second = json.loads((run_dir / "results.json").read_text())
    assert second["results"]["graphsam"]["0"]["epochs_run"] == 2
    ckpt = torch.load(run_dir / "graphsam" / "seed0" / "last.pt", weights_only=True)
    assert ckpt["world_size"] == WORLD and len(ckpt["rng_ranks"]) == WORLD


def test_sharding_and_launch_helpers():
    batch = list(range(5))
    assert shard(batch, 0, 2) + shard(batch, 1, 2) == batch
    assert [len(shard(batch, r, 3)) for r in range(3)] == [1, 2, 2]
    with pytest.raises(UserError, match="--batch-size"):
        check_shardable(25, 8, 2)  # a last batch of 1 molecule for 2 ranks
    check_shardable(26, 7, 2)
    argv = ["train", "--nproc-per-node", "2", "--epochs", "3", "--master-port=1234", "--nnodes", "2"]
    assert strip_launch_options(argv) == ["train", "--epochs", "3"]
    cmd = torchrun_command(["train"], 2)
    assert cmd[1:5] == ["-m", "torch.distributed.run", "--nproc-per-node=2", "--standalone"]
    cmd = torchrun_command(["train"], 4, nnodes="2", node_rank=1, master_addr="node0", master_port=29400)
    assert "--nnodes=2" in cmd and "--node-rank=1" in cmd and "--master-addr=node0" in cmd
    assert "--master-port=29400" in cmd and "--standalone" not in cmd
