"""Training of one model with one optimizer on one seed's split: the epoch loop, evaluation,
model selection on the validation metric, early stopping, checkpoints and exact resume."""
from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from graphsam_ext import __version__
from graphsam_ext.errors import UserError
from graphsam_ext.models import ModelConfig, MolecularGraphTransformer
from graphsam_ext.optim.accumulate import accumulating_closure
from graphsam_ext.optim.bn import bn_first_pass_only
from graphsam_ext.train.checkpoint import load_checkpoint, save_checkpoint
from graphsam_ext.train import distributed
from graphsam_ext.train.config import LOCAL_PERTURBATION, TrainConfig
from graphsam_ext.train.losses import loss_for
from graphsam_ext.train.metrics import default_metric, evaluate, is_better
from graphsam_ext.train.optimizers import build_optimizer, zeroes_own_grads
from graphsam_ext.train.schedules import StepSchedule
from graphsam_ext.train.targets import TargetScaler


@dataclass
class SplitData:
    """One seed's data: the dataset, its split indices and the train-split target scaler."""

    dataset: object
    train: list
    val: list
    test: list
    scaler: TargetScaler | None

    @property
    def task_type(self) -> str:
        return self.dataset.task_type


# Molecules whose pooled vectors set the pooled BatchNorm's statistics after each epoch: the
# standard error of their mean is 4% of a standard deviation, at the cost of a forward pass over
# at most this many molecules per epoch (a large share of an epoch on the smallest sets, a small
# one on Tox21; docs/model.md).
POOL_NORM_SAMPLE = 512


def epoch_order(train_indices, seed: int, epoch: int) -> list:
    """The training order of an epoch: a function of (seed, epoch) only, so a resumed run and
    every optimizer compared on this seed see the same batches."""
    rng = np.random.default_rng([seed, epoch])
    return [train_indices[i] for i in rng.permutation(len(train_indices))]


def build_model(cfg: TrainConfig, dataset) -> MolecularGraphTransformer:
    feat = dataset.featurizer
    model_cfg = ModelConfig(
        atom_dim=feat.atom_dim,
        edge_dim=feat.edge_dim,
        num_tasks=len(dataset.task_names),
        distance_bins=feat.distance_bins if cfg.attention == "pairs" else 0,
        mol_dim=feat.mol_dim,
        **cfg.model_kwargs(),
    )
    return MolecularGraphTransformer(model_cfg)


def fit_descriptor_scaling(model: MolecularGraphTransformer, data: SplitData) -> None:
    """Standardize the model's molecule descriptors with the training split's statistics
    (nothing to do for a model without descriptors or built without the scaling)."""
    if model.config.mol_dim and model.config.mol_scaling:
        model.fit_mol_scaling(torch.stack([data.dataset[i].graph.mol_features for i in data.train]))


@torch.no_grad()
def predict_batches(model, batches, device, task_type: str, scaler: TargetScaler | None):
    """Predictions in original units (probabilities for classification) for an iterable of
    BatchGraphs; returns numpy (pred, y, mask), each (num_molecules, num_tasks)."""
    model.eval()
    preds, ys, masks = [], [], []
    for batch in batches:
        batch = batch.to(device)
        out = model(batch)
        out = torch.sigmoid(out) if task_type == "classification" else scaler.inverse_transform(out)
        preds.append(out.float().cpu())
        ys.append(batch.y.float().cpu())
        masks.append(batch.mask.cpu())
    if not preds:
        return np.zeros((0, 0)), np.zeros((0, 0)), np.zeros((0, 0), dtype=bool)
    return torch.cat(preds).numpy(), torch.cat(ys).numpy(), torch.cat(masks).numpy()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


class SeedRun:
    """Trains ``optimizer_name`` on one seed's split, writing ``last.pt``, ``best.pt`` and
    ``result.json`` into ``out_dir``; an existing ``last.pt`` there is resumed from exactly.

    progress: show tqdm bars; log: where one-line messages go (None: nowhere).
    dist: this process's ``distributed.DistContext`` in a data-parallel run (None: one process).
    The model is then wrapped in ``DistributedDataParallel``, each rank trains on its shard of
    every global batch, only rank 0 evaluates (and broadcasts the metrics) and writes files.
    """

    def __init__(self, cfg: TrainConfig, optimizer_name: str, seed: int, data: SplitData, out_dir,
                 device, *, progress: bool = False, log: Callable[[str], None] | None = None,
                 dist: distributed.DistContext | None = None):
        self.cfg = cfg
        self.dist = dist
        self.optimizer_name = optimizer_name
        self.seed = seed
        self.data = data
        self.out_dir = Path(out_dir)
        self.device = torch.device(device)
        self.progress = progress
        self.log = log or (lambda msg: None)
        self.metric = cfg.metric or default_metric(data.task_type)
        self.loss_fn = loss_for(data.task_type)
        self._ready = False

    # -- the pieces a checkpoint holds ---------------------------------------------------------
    def _static_payload(self) -> dict:
        ds = self.data.dataset
        return {
            "graphsam_ext_version": __version__,
            "model_config": self.model.config.to_dict(),
            "task_names": list(ds.task_names),
            "task_type": ds.task_type,
            "scaler": None if self.data.scaler is None else self.data.scaler.state_dict(),
            "featurizer": ds.featurizer.config(),
            "data_summary": json.loads(json.dumps(getattr(ds, "summary", {}), default=str)),
            "train_config": self.cfg.to_dict(),
            "optimizer_name": self.optimizer_name,
            "seed": self.seed,
            "metric": self.metric,
        }

    def _setup(self):
        torch.manual_seed(self.seed)
        self.model = build_model(self.cfg, self.data.dataset)
        fit_descriptor_scaling(self.model, self.data)
        self.model = self.model.to(self.device)
        dist = self.dist
        if dist is not None and dist.rank > 0:  # every rank starts from the same weights, with its own dropout
            torch.manual_seed(distributed.rank_seed(self.seed, dist.rank))
        # this run's own random stream (dropout): runs interleaved epoch by epoch in one process
        # must not draw from each other's, or results would depend on what else ran
        self.rng = _rng_state(self.device)
        cfg = self.cfg
        self.optimizer = build_optimizer(self.optimizer_name, self.model.parameters(), **cfg.optimizer_kwargs())
        self.own_grads = zeroes_own_grads(self.optimizer)
        if cfg.clip_grad_norm is not None and self.own_grads:
            self.optimizer.max_grad_norm = cfg.clip_grad_norm  # the SAM family clips inside its step
        self.forward_model = self.model
        self.world_size = 1 if dist is None else dist.world_size
        if dist is not None:
            distributed.check_shardable(len(self.data.train), cfg.batch_size, dist.world_size)
            # after the optimizer: DDP's buckets see the parameters in the fused engine's flat buffers
            self.forward_model = dist.wrap(self.model)
            if cfg.local_perturbation and self.optimizer_name in LOCAL_PERTURBATION:
                self.optimizer.perturbation_context = self.forward_model.no_sync
        # fp16: float16 autocast with a loss scale that backs off on overflow (torch's defaults)
        self.grad_scaler = torch.amp.GradScaler(self.device.type) if cfg.precision == "fp16" else None
        self.label_counts = distributed.label_counts(self.data.dataset)
        self.steps_per_epoch = max(1, math.ceil(len(self.data.train) / (cfg.batch_size * cfg.accumulate)))
        self.scheduler = StepSchedule(
            self.optimizer, schedule=cfg.schedule, steps_per_epoch=self.steps_per_epoch, max_lr=cfg.lr,
            init_lr=cfg.init_lr, final_lr=cfg.final_lr, warmup_epochs=cfg.warmup_epochs,
            decay_epochs=cfg.decay_epochs, total_epochs=cfg.epochs,
        )
        self.history: list[dict] = []
        self.best_value: float | None = None
        self.best_epoch = -1
        self.best_state = None
        self.bad_epochs = 0
        self.stopped_early = False

    def _resume(self, ckpt: dict) -> None:
        self.model.load_state_dict(ckpt["model_state"])
        self.optimizer.load_state_dict(ckpt["optimizer_state"])
        self.scheduler.load_state_dict(ckpt["scheduler_state"])
        # a resumed run may be given more epochs; the cosine schedule then stretches to them
        self.scheduler.kwargs["total_epochs"] = self.cfg.epochs
        self.history = list(ckpt["history"])
        self.best_value = ckpt["best_value"]
        self.best_epoch = ckpt["best_epoch"]
        self.best_state = ckpt["best_state"]
        self.bad_epochs = ckpt["bad_epochs"]
        # a resumed run may also be given more patience
        self.stopped_early = self.bad_epochs >= self.cfg.patience
        saved_world = ckpt.get("world_size", 1)
        if saved_world != self.world_size:
            raise UserError(f"{self.out_dir / 'last.pt'} was written by a run over {saved_world} process(es); "
                            f"resume it with --nproc-per-node (times --nnodes) {saved_world}, not {self.world_size}")
        self.rng = ckpt["rng"] if self.dist is None else ckpt["rng_ranks"][self.dist.rank]
        if self.grad_scaler is not None:
            if ckpt.get("grad_scaler_state") is None:
                raise UserError(f"{self.out_dir / 'last.pt'} was written by a run without --precision fp16; resume "
                                f"it with the precision it was trained with ({self.cfg.precision} was given)")
            self.grad_scaler.load_state_dict(ckpt["grad_scaler_state"])

    def _save_last(self) -> None:
        rngs = None if self.dist is None else self.dist.gather_objects(self.rng)
        if self.dist is not None and not self.dist.is_main:
            return
        save_checkpoint(
            {
                **self._static_payload(),
                "epoch": len(self.history),
                "model_state": self.model.state_dict(),
                "optimizer_state": self.optimizer.state_dict(),
                "scheduler_state": self.scheduler.state_dict(),
                "history": self.history,
                "best_value": self.best_value,
                "best_epoch": self.best_epoch,
                "best_state": self.best_state,
                "bad_epochs": self.bad_epochs,
                "stopped_early": self.stopped_early,
                "rng": self.rng,
                "world_size": self.world_size,
                "grad_scaler_state": None if self.grad_scaler is None else self.grad_scaler.state_dict(),
                **({} if rngs is None else {"rng_ranks": rngs}),
            },
            self.out_dir / "last.pt",
        )

    def _save_best(self) -> None:
        if self.dist is not None and not self.dist.is_main:
            return
        save_checkpoint(
            {**self._static_payload(), "epoch": self.best_epoch + 1, "model_state": self.best_state,
             "val_metrics": self.history[self.best_epoch]["val"]},
            self.out_dir / "best.pt",
        )

    # -- the loop --------------------------------------------------------------------------------
    def _loader(self, indices):
        from graphsam_ext.data import make_loader

        return make_loader(self.data.dataset, indices, batch_size=self.cfg.batch_size, shuffle=False,
                           num_workers=self.cfg.num_workers)

    def _epoch_steps(self, epoch: int):
        """The steps of an epoch: per step, this rank's micro-batches (dataset indices) and each
        one's loss weight. A step is ``accumulate`` consecutive global batches of the epoch order;
        each is split over the ranks; a micro-batch's mean loss is weighted by its share of the
        step's present labels times the number of ranks (whose gradients DDP averages), so the
        step's gradient is that of the mean loss over all its molecules."""
        cfg, dist = self.cfg, self.dist
        order = epoch_order(self.data.train, self.seed, epoch)
        size, n = cfg.batch_size, cfg.accumulate
        globals_ = [order[i:i + size] for i in range(0, len(order), size)]
        steps = []
        for k in range(0, len(globals_), n):
            group = globals_[k:k + n]
            mine = group if dist is None else [distributed.shard(b, dist.rank, dist.world_size) for b in group]
            total = max(int(sum(self.label_counts[i] for b in group for i in b)), 1)
            weights = [float(sum(self.label_counts[i] for i in b)) * self.world_size / total for b in mine]
            steps.append((mine, weights))
        return steps

    def _step_loader(self, steps):
        """Batches of every micro-batch of ``steps``, in order (DataLoader workers prefetch them)."""
        from graphsam_ext.data import collate

        return torch.utils.data.DataLoader(self.data.dataset, batch_sampler=[b for mine, _ in steps for b in mine],
                                           collate_fn=collate, num_workers=self.cfg.num_workers,
                                           persistent_workers=False)

    def _train_epoch(self, epoch: int, bar_factory) -> dict:
        model, opt, device = self.model, self.optimizer, self.device
        scaler = self.data.scaler
        model.train()
        if hasattr(opt, "start_epoch"):
            opt.start_epoch()
        passes = 0
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        steps = 0
        lr = opt.param_groups[0]["lr"]
        _set_rng_state(self.rng, device)
        _sync(device)
        start, cpu_start = time.perf_counter(), time.process_time()
        steps_plan = self._epoch_steps(epoch)
        batches = iter(self._step_loader(steps_plan))
        forward = self.forward_model
        no_sync = forward.no_sync if self.dist is not None else None

        autocast = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.cfg.precision)
        grad_scaler = self.grad_scaler

        def loss_of(batch):
            target = batch.y if scaler is None else scaler.transform(batch.y)
            if autocast is not None:
                with torch.autocast(device.type, dtype=autocast):
                    out = forward(batch)
                return self.loss_fn(out.float(), target, batch.mask)
            return self.loss_fn(forward(batch), target, batch.mask)

        for mine, weights in bar_factory(steps_plan, total=self.steps_per_epoch, desc=f"epoch {epoch + 1}",
                                         leave=False):
            micro = [next(batches).to(device, non_blocking=True) for _ in mine]
            accumulated = accumulating_closure(micro, loss_of, weights, no_sync=no_sync, grad_scaler=grad_scaler)

            def closure():
                nonlocal passes
                passes += 1
                return accumulated()

            if self.own_grads:
                loss = opt.step(bn_first_pass_only(model, closure) if self.cfg.bn_first_pass_only else closure,
                                grad_scaler=grad_scaler)
            elif self.cfg.clip_grad_norm is not None or grad_scaler is not None:
                opt.zero_grad(set_to_none=True)
                with torch.enable_grad():
                    loss = closure()
                if grad_scaler is not None:
                    grad_scaler.unscale_(opt)
                if self.cfg.clip_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), self.cfg.clip_grad_norm)
                if grad_scaler is not None:
                    grad_scaler.step(opt)
                else:
                    opt.step()
            else:
                opt.zero_grad(set_to_none=True)
                loss = opt.step(closure)
            if grad_scaler is not None:
                grad_scaler.update()
            self.scheduler.step()
            loss_sum += loss.detach().to(torch.float64)
            steps += 1
        _sync(device)
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
        self.rng = _rng_state(device)
        if self.dist is not None:  # each rank's loss is its weighted share: the sum over ranks / ranks
            loss_sum = self.dist.sum(loss_sum) / self.world_size
        return {"train_loss": float(loss_sum) / max(steps, 1), "train_seconds": seconds,
                "train_cpu_seconds": cpu_seconds, "passes": passes,
                "steps": steps, "lr": lr, "rho": opt.param_groups[0].get("rho")}

    def _refresh_pool_norm(self, record: dict) -> None:
        """Recompute the pooled BatchNorm's statistics for the weights just trained (every rank
        alike) over a fixed random sample of at most POOL_NORM_SAMPLE training molecules,
        counted as training time in ``record``."""
        if self.model.pool_norm is None:
            return
        from graphsam_ext.data import make_loader

        _sync(self.device)
        start, cpu_start = time.perf_counter(), time.process_time()
        train = self.data.train
        sample = [train[i] for i in np.random.default_rng([self.seed, POOL_NORM_SAMPLE]).permutation(len(train))]
        loader = make_loader(self.data.dataset, sample[:POOL_NORM_SAMPLE], batch_size=max(256, self.cfg.batch_size),
                             shuffle=False, num_workers=self.cfg.num_workers)
        self.model.refresh_pool_norm(batch.to(self.device) for batch in loader)
        _sync(self.device)
        record["train_seconds"] += time.perf_counter() - start
        record["train_cpu_seconds"] += time.process_time() - cpu_start

    def _evaluate(self, indices) -> dict:
        """Metrics over ``indices``; in a distributed run rank 0 computes them for every rank."""
        if self.dist is None:
            return self._evaluate_here(indices)
        return self.dist.broadcast_object(self._evaluate_here(indices) if self.dist.is_main else None)

    def _evaluate_here(self, indices) -> dict:
        pred, y, mask = predict_batches(self.model, self._loader(indices), self.device, self.data.task_type,
                                        self.data.scaler)
        if pred.size == 0:
            return {}
        return evaluate(y, pred, mask, self.data.task_type)

    @property
    def finished(self) -> bool:
        return self._ready and (self.stopped_early or len(self.history) >= self.cfg.epochs)

    def _prepare(self) -> None:
        """Build everything once; continue from ``last.pt`` when the directory has one."""
        if self._ready:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._setup()
        last = self.out_dir / "last.pt"
        if last.exists():
            ckpt = load_checkpoint(last, map_location=self.device)
            if ckpt["optimizer_name"] != self.optimizer_name or ckpt["seed"] != self.seed:
                raise UserError(f"{last} belongs to optimizer {ckpt['optimizer_name']} seed {ckpt['seed']}, "
                                 f"not {self.optimizer_name} seed {self.seed}")
            self._resume(ckpt)
            self.log(f"{self.optimizer_name} seed {self.seed}: resuming after epoch {len(self.history)}")
        self._ready = True

    def run(self, stop_after_epochs: int | None = None) -> dict:
        """Train until ``cfg.epochs`` or early stopping, or until ``stop_after_epochs`` epochs are
        done in total (to interleave several runs epoch by epoch, or to simulate an interruption;
        calling ``run`` again continues). Returns the result dict, which holds the test metrics of
        the selected checkpoint once training is complete."""
        self._prepare()
        bar_factory = _bar_factory(self.progress)
        epochs = bar_factory(range(len(self.history), self.cfg.epochs), initial=len(self.history),
                             total=self.cfg.epochs, desc=f"{self.optimizer_name} seed {self.seed}", leave=False)
        for epoch in epochs:
            if self.stopped_early or (stop_after_epochs is not None and epoch >= stop_after_epochs):
                break
            record = {"epoch": epoch + 1, **self._train_epoch(epoch, bar_factory)}
            self._refresh_pool_norm(record)
            start = time.perf_counter()
            record["val"] = self._evaluate(self.data.val)
            record["eval_seconds"] = time.perf_counter() - start
            record["elapsed_seconds"] = (self.history[-1]["elapsed_seconds"] if self.history else 0.0) + \
                record["train_seconds"] + record["eval_seconds"]
            self.history.append(record)
            value = record["val"].get(self.metric, math.nan)
            if is_better(self.metric, value, self.best_value):
                self.best_value, self.best_epoch, self.bad_epochs = value, epoch, 0
                self.best_state = copy.deepcopy({k: v.detach().cpu() for k, v in self.model.state_dict().items()})
                self._save_best()
            else:
                self.bad_epochs += 1
                self.stopped_early = self.bad_epochs >= self.cfg.patience
            self._save_last()
            if hasattr(epochs, "set_postfix"):
                epochs.set_postfix(loss=f"{record['train_loss']:.4f}", **{f"val_{self.metric}": f"{value:.4f}"})
        finished = self.stopped_early or len(self.history) >= self.cfg.epochs
        result = self._result(finished)
        if finished and (self.dist is None or self.dist.is_main):
            (self.out_dir / "result.json").write_text(json.dumps(result, indent=2, default=_json_default))
        return result

    def _result(self, finished: bool) -> dict:
        h = self.history
        result = {
            "optimizer": self.optimizer_name,
            "seed": self.seed,
            "finished": finished,
            "epochs_run": len(h),
            "stopped_early": self.stopped_early,
            "best_epoch": self.best_epoch + 1,
            "metric": self.metric,
            "val": h[self.best_epoch]["val"] if self.best_epoch >= 0 else {},
            "num_parameters": self.model.num_parameters(),
            "steps_per_epoch": self.steps_per_epoch,
            "train_seconds_per_epoch": float(np.mean([r["train_seconds"] for r in h])) if h else math.nan,
            "train_cpu_seconds_per_epoch": float(np.mean([r["train_cpu_seconds"] for r in h])) if h else math.nan,
            "epoch_seconds": float(np.mean([r["train_seconds"] + r["eval_seconds"] for r in h])) if h else math.nan,
            "passes_per_epoch": float(np.mean([r["passes"] for r in h])) if h else math.nan,
            "history": h,
        }
        if finished and self.best_state is not None:
            self.model.load_state_dict(self.best_state)
            result["test"] = self._evaluate(self.data.test)
        return result


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    raise TypeError(f"not JSON serializable: {type(o)}")


def _bar_factory(enabled: bool):
    """tqdm when progress is wanted and available, else a pass-through."""
    if enabled:
        try:
            from tqdm.auto import tqdm

            return lambda it, **kw: tqdm(it, dynamic_ncols=True, **kw)
        except ImportError:
            pass
    return lambda it, **kw: it
