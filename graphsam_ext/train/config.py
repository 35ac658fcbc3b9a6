"""The configuration of a training run: one dataclass, stored as JSON in every run directory
and every checkpoint so a run can be resumed and a result traced to its settings."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

from graphsam_ext.models.readout import READOUT_NAMES
from graphsam_ext.models.transformer import ATTENTION_NAMES
from graphsam_ext.train.optimizers import check_optimizer_name
from graphsam_ext.train.schedules import SCHEDULE_NAMES

SPLIT_NAMES = ("random", "scaffold", "balanced_scaffold")


@dataclass
class TrainConfig:
    # data
    dataset: str | None = None
    data_path: str | None = None
    smiles_column: str | None = None
    target_columns: list[str] | None = None
    task_type: str | None = None
    data_dir: str | None = None
    split: str = "random"
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    pair_distance: int | str | None = None
    # optimization
    optimizers: list[str] = field(default_factory=lambda: ["adam"])
    lr: float = 1e-3
    init_lr: float | None = None
    final_lr: float | None = None
    schedule: str = "paper"
    warmup_epochs: float = 2.0
    decay_epochs: float = 30.0
    weight_decay: float = 0.0
    rho: float = 0.05
    beta: float = 0.99
    gamma: float = 0.5
    lam: int = 1
    sam_every: int = 2
    # protocol
    epochs: int = 30
    batch_size: int = 32
    patience: int = 20
    seeds: int = 3
    first_seed: int = 0
    metric: str | None = None
    num_workers: int = 0
    # model (see graphsam_ext.models.ModelConfig)
    hidden: int = 256
    layers: int = 4
    heads: int = 8
    edge_hidden: int = 64
    dropout: float = 0.1
    ffn_multiplier: int = 2
    readout: str = "mean"
    attention: str = "bonds"

    def __post_init__(self):
        self.split = self.split.replace("-", "_")
        if self.split not in SPLIT_NAMES:
            raise ValueError(f"split must be one of {', '.join(SPLIT_NAMES)}; got {self.split!r}")
        self.split_fractions = tuple(float(f) for f in self.split_fractions)
        if len(self.split_fractions) != 3 or any(f < 0 for f in self.split_fractions) or not math.isclose(
            sum(self.split_fractions), 1.0, abs_tol=1e-6
        ):
            raise ValueError(
                f"split fractions must be three non-negative numbers summing to 1 (train val test), "
                f"got {self.split_fractions}"
            )
        if not self.optimizers:
            raise ValueError("optimizers must name at least one optimizer")
        self.optimizers = [check_optimizer_name(o) for o in self.optimizers]
        if len(set(self.optimizers)) != len(self.optimizers):
            raise ValueError(f"optimizers are listed twice: {self.optimizers}")
        if self.schedule not in SCHEDULE_NAMES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULE_NAMES)}; got {self.schedule!r}")
        if self.readout not in READOUT_NAMES:
            raise ValueError(f"readout must be one of {', '.join(READOUT_NAMES)}; got {self.readout!r}")
        if self.attention not in ATTENTION_NAMES:
            raise ValueError(f"attention must be one of {', '.join(ATTENTION_NAMES)}; got {self.attention!r}")
        if self.attention == "pairs" and self.pair_distance is None:
            self.pair_distance = 3
        if self.attention != "pairs" and self.pair_distance is not None:
            raise ValueError("pair_distance only applies to attention='pairs' (--attention pairs); drop it or "
                             "switch the attention mode")
        for name in ("epochs", "batch_size", "seeds", "patience"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.first_seed < 0:
            raise ValueError(f"first_seed must be >= 0, got {self.first_seed}")
        if self.task_type not in (None, "classification", "regression"):
            raise ValueError(f"task_type must be classification or regression, got {self.task_type!r}")
        if self.dataset is not None and self.data_path is not None:
            raise ValueError("give either a dataset name (--dataset) or a CSV file (--data), not both")

    @property
    def seed_list(self) -> list[int]:
        return list(range(self.first_seed, self.first_seed + self.seeds))

    @property
    def data_label(self) -> str:
        """A short name of the data for run directory names and tables."""
        if self.data_path:
            from pathlib import Path

            return Path(self.data_path).stem
        return self.dataset or "default"

    def model_kwargs(self) -> dict:
        return dict(hidden=self.hidden, layers=self.layers, heads=self.heads, edge_hidden=self.edge_hidden,
                    dropout=self.dropout, ffn_multiplier=self.ffn_multiplier, readout=self.readout,
                    attention=self.attention)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["split_fractions"] = list(self.split_fractions)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown training config keys {unknown}")
        return cls(**d)
