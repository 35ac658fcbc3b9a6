"""The configuration of a training run: one dataclass, stored as JSON in every run directory
and every checkpoint so a run can be resumed and a result traced to its settings.

It is the one source of the training options: every field carries its command-line flag, help
text, choices and group in its metadata (see :func:`option`), and ``graphsam train`` /
``graphsam compare`` build their parsers and help from it (``graphsam_ext.cli.options``). The
defaults are the ones chosen by the search in ``docs/model.md``; ``train``, ``compare`` and
``make run`` all build the same default model and differ only in ``COMMAND_DEFAULTS``.
"""
from __future__ import annotations

import math
from dataclasses import MISSING, asdict, dataclass, field, fields

from graphsam_ext.errors import UserError
from graphsam_ext.models.readout import READOUT_NAMES
from graphsam_ext.models.transformer import ATTENTION_NAMES
from graphsam_ext.train.optimizers import (GRAPHSAM_FAMILY, GRAPHSAM_GAMMA, OPTIMIZER_NAMES, SAM_FAMILY,
                                          check_optimizer_name, default_rho_text)
from graphsam_ext.train.schedules import SCHEDULE_NAMES

SPLIT_NAMES = ("random", "scaffold", "balanced_scaffold")
# other spellings of the split names: the CLI's dashes and chemprop's --split-type values
SPLIT_SPELLINGS = {"balanced-scaffold": "balanced_scaffold", "scaffold_balanced": "balanced_scaffold",
                   "scaffold-balanced": "balanced_scaffold"}
METRIC_NAMES = ("roc_auc", "prc_auc", "rmse", "mae")
DATASET_CHOICES = ("bbbp", "tox21", "sider", "clintox", "esol", "lipophilicity", "default")
# what differs between the subcommands: nothing but the optimizers they train by default
# the optimizers whose perturbation gradient may be per replica under DDP (used for nothing else)
LOCAL_PERTURBATION = ("sam", "asam", "sam-k")
PERTURBING = SAM_FAMILY + GRAPHSAM_FAMILY
PRECISIONS = ("fp32", "bf16", "fp16")
# SAM-family optimizers without max_grad_norm
NO_CLIPPING = ("looksam", "ae-sam")
COMMAND_DEFAULTS = {"train": {}, "compare": {"optimizers": ["adam", "sam", "graphsam"]}}


def option(default, help: str, *, group: str, flags: tuple = (), choices=None, nargs=None, metavar=None,
           parse=None):
    """A dataclass field with its command-line option.

    flags: the option strings, the first one canonical (default ``--<field-name>``); the others
    are spellings of the same option (chemprop's, for users who bring their command lines).
    parse: converts one command-line string; choices: listed in the help (and checked by the
    dataclass, which also accepts the spellings ``parse`` maps to them).
    """
    meta = {"help": help, "group": group, "flags": tuple(flags), "choices": choices, "nargs": nargs,
            "metavar": metavar, "parse": parse}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


def parse_split(text: str) -> str:
    key = SPLIT_SPELLINGS.get(text, text)
    if key not in SPLIT_NAMES:
        raise UserError(f"split {text!r}: choose one of random, scaffold, balanced-scaffold "
                        "(chemprop's scaffold_balanced is accepted too)")
    return key


def parse_pair_distance(text):
    if text is None or isinstance(text, int) or text == "all":
        return text
    try:
        return int(text)
    except ValueError:
        raise UserError(f"--pair-distance must be a positive integer or 'all', got {text!r}") from None


DATA, OPT, PROTO, MODEL = "data", "optimization", "protocol", "model"


@dataclass
class TrainConfig:
    # data
    dataset: str | None = option(None, "a named dataset (default: with neither --dataset nor --data-path, the "
                                       "embedded CHEMBL2321810 pIC50 set)", group=DATA, choices=DATASET_CHOICES,
                                 metavar="NAME", parse=str)
    data_path: str | None = option(None, "a CSV file with a SMILES column and target columns (default: none, see "
                                         "--dataset)", group=DATA,
                                   flags=("--data-path", "-i", "--data"), metavar="CSV")
    smiles_column: str | None = option(None, "SMILES column of the CSV (default: a column named smiles)", group=DATA,
                                       flags=("--smiles-column", "-s", "--smiles-columns"), metavar="COL")
    target_columns: list[str] | None = option(None, "target columns of the CSV (default: every column except the "
                                                    "SMILES column and ID-like ones)", group=DATA, nargs="+",
                                              metavar="COL")
    task_type: str | None = option(None, "task type (default: inferred from the targets)", group=DATA,
                                   flags=("--task-type", "-t"), choices=("classification", "regression"))
    data_dir: str | None = option(None, "directory holding the named datasets' CSV files (default: "
                                        "$GRAPHSAM_DATA_DIR, then the cache)", group=DATA, metavar="DIR")
    split: str = option("random", "how to split train / val / test: scaffold is MoleculeNet's (deterministic); "
                                  "random and balanced-scaffold (chemprop's) change with the seed", group=DATA,
                        flags=("--split", "--split-type"), choices=("random", "scaffold", "balanced-scaffold"),
                        parse=parse_split)
    split_fractions: tuple[float, float, float] = option((0.8, 0.1, 0.1), "train, val and test fractions, summing "
                                                                          "to 1", group=DATA,
                                                         flags=("--split-fractions", "--split-sizes"), nargs=3,
                                                         metavar=("TRAIN", "VAL", "TEST"), parse=float)
    # optimization
    optimizers: list[str] = option(["adam"], "optimizer(s) to train, each on identical splits, weights and batches",
                                   group=OPT, flags=("--optimizers", "--optimizer"), nargs="+",
                                   choices=OPTIMIZER_NAMES, metavar="NAME", parse=str)
    lr: float = option(1e-3, "peak learning rate", group=OPT, flags=("--lr", "--max-lr"), parse=float)
    init_lr: float | None = option(None, "learning rate at the start of warm-up (default lr/10)", group=OPT,
                                   parse=float)
    final_lr: float | None = option(None, "learning rate at the end of the decay (default lr/10)", group=OPT,
                                    parse=float)
    schedule: str = option("paper", "learning-rate schedule: paper = warm-up, exponential decay to final-lr at "
                                    "decay-epochs, flat", group=OPT, choices=SCHEDULE_NAMES)
    warmup_epochs: float = option(2.0, "warm-up length in epochs", group=OPT, parse=float)
    decay_epochs: float = option(30.0, "epoch at which the paper schedule reaches final-lr", group=OPT, parse=float)
    weight_decay: float = option(0.0, "weight decay of the base optimizer", group=OPT, parse=float)
    rho: float | None = option(None, "SAM-family neighbourhood size, the same for every optimizer of the run "
                                     f"(default: each optimizer's own, chosen by search: {default_rho_text()})",
                               group=OPT, parse=float)
    beta: float = option(0.99, "GraphSAM: EMA smoothing of the perturbation direction", group=OPT, parse=float)
    gamma: float = option(GRAPHSAM_GAMMA, "GraphSAM / SAM-One: rho decay factor (chosen by search with rho; the "
                                          "paper's code uses 0.5)", group=OPT, parse=float)
    lam: int = option(1, "GraphSAM: decay rho every LAM epochs", group=OPT, parse=int)
    sam_every: int = option(2, "sam-k: a SAM step every k steps, base steps in between", group=OPT, parse=int)
    looksam_k: int = option(8, "looksam: an exact SAM step every k steps (the GraphSAM paper's tuning)", group=OPT,
                            parse=int)
    looksam_alpha: float = option(0.2, "looksam: weight of the stored orthogonal component of the SAM gradient",
                                  group=OPT, parse=float)
    aesam_delta: float = option(0.9, "ae-sam: EMA constant of the squared gradient norm's mean and variance",
                                group=OPT, parse=float)
    aesam_c: float = option(0.0, "ae-sam: a SAM step when ||g||^2 exceeds its running mean by c running standard "
                                 "deviations", group=OPT, parse=float)
    local_perturbation: bool = option(False, "sam / asam / sam-k under DDP (--nproc-per-node): each process perturbs "
                                             "along its own gradient (m-sharpness), that pass run inside no_sync; "
                                             "the update stays synchronized", group=OPT)
    clip_grad_norm: float | None = option(None, "clip the gradient of each update to this global norm (SAM family: "
                                                "the updating gradient at the perturbed point; not for looksam, "
                                                "ae-sam) (default: no clipping)", group=OPT, metavar="X",
                                          parse=float)
    bn_first_pass_only: bool = option(True, "BatchNorm running statistics move only in the first forward pass of "
                                            "each step, not in the perturbed passes of the SAM family", group=OPT)
    precision: str = option("fp32", "training forward passes in float32, under bfloat16 autocast, or under "
                                    "float16 autocast with a gradient scaler (weights, gradients, optimizer state and "
                                    "evaluation stay float32)", group=OPT, choices=PRECISIONS)
    # protocol
    epochs: int = option(50, "maximum epochs", group=PROTO, parse=int)
    batch_size: int = option(32, "molecules per batch; with --accumulate N a micro-batch (a step then sees N x "
                                 "batch-size molecules); with several processes the batch is split over them, so "
                                 "the global batch does not depend on the number of processes", group=PROTO,
                             parse=int)
    accumulate: int = option(1, "gradient accumulation: each step (every closure call of a SAM step) runs N "
                                "micro-batches of --batch-size and weighs their losses to the mean over all N",
                             group=PROTO, metavar="N", parse=int)
    patience: int = option(20, "early stop after this many epochs without validation improvement", group=PROTO,
                           parse=int)
    seeds: int = option(3, "number of seeds (each: split where random, initial weights, batch order)", group=PROTO,
                        flags=("--seeds", "--num-replicates"), metavar="N", parse=int)
    first_seed: int = option(0, "the first seed; seeds are S..S+N-1", group=PROTO, metavar="S", parse=int)
    metric: str | None = option(None, "validation metric for model selection (default roc_auc / rmse by task type)",
                                group=PROTO, choices=METRIC_NAMES)
    num_workers: int = option(0, "DataLoader worker processes", group=PROTO, parse=int)
    # model (see graphsam_ext.models.ModelConfig)
    hidden: int = option(64, "node state width", group=MODEL, parse=int)
    layers: int = option(2, "transformer layers", group=MODEL, parse=int)
    heads: int = option(4, "attention heads", group=MODEL, parse=int)
    edge_hidden: int = option(32, "bond embedding width", group=MODEL, parse=int)
    dropout: float = option(0.1, "dropout", group=MODEL, parse=float)
    ffn_multiplier: int = option(2, "feed-forward width over hidden", group=MODEL, parse=int)
    readout: str = option("mean_sum", "graph readout: mean_sum = [mean | sum / 10] of the atom states", group=MODEL,
                          choices=READOUT_NAMES)
    attention: str = option("bonds", "attend over bonds, or over atom pairs within --pair-distance with a learned "
                                     "distance bias", group=MODEL, choices=ATTENTION_NAMES)
    pair_distance: int | str | None = option(None, "pairs mode: largest topological distance of a pair edge, or "
                                                   "'all' (default 3 in pairs mode)", group=MODEL, metavar="K",
                                             parse=parse_pair_distance)
    descriptors: bool = option(True, "concatenate molecule-level RDKit descriptors to the pooled graph vector",
                               group=MODEL)
    local_mpnn: bool = option(True, "a sum-aggregating bond message-passing block beside the attention in every "
                                    "layer (GraphGPS's local block)", group=MODEL)
    descriptor_scaling: bool = option(False, "standardize the molecule descriptors with the training split's mean "
                                             "and standard deviation (stored with the model)", group=MODEL)
    pool_norm: bool = option(True, "a BatchNorm on the averaged part of the pooled molecule vector (the mean half "
                                   "of mean_sum), its statistics recomputed over training molecules before every "
                                   "evaluation", group=MODEL)

    def __post_init__(self):
        try:
            self._check()
        except UserError:
            raise
        except ValueError as exc:
            raise UserError(str(exc)) from None

    def _check(self) -> None:
        self.split = parse_split(self.split)
        self.split_fractions = tuple(float(f) for f in self.split_fractions)
        if len(self.split_fractions) != 3 or any(f < 0 for f in self.split_fractions) or not math.isclose(
            sum(self.split_fractions), 1.0, abs_tol=1e-6
        ):
            raise UserError(
                f"split fractions must be three non-negative numbers summing to 1 (train val test), "
                f"got {self.split_fractions}"
            )
        if self.dataset is not None:
            name = self.dataset.strip().lower()
            if name not in DATASET_CHOICES:
                raise UserError(f"unknown dataset {self.dataset!r}; choose one of: {', '.join(DATASET_CHOICES)}")
            self.dataset = name
        if not self.optimizers:
            raise UserError("optimizers must name at least one optimizer")
        self.optimizers = [check_optimizer_name(o) for o in self.optimizers]
        if len(set(self.optimizers)) != len(self.optimizers):
            raise UserError(f"optimizers are listed twice: {self.optimizers}")
        if self.clip_grad_norm is not None:
            if not self.clip_grad_norm > 0:
                raise UserError(f"clip_grad_norm (--clip-grad-norm) must be > 0, got {self.clip_grad_norm}")
            other = [o for o in self.optimizers if o in NO_CLIPPING]
            if other:
                raise UserError(f"clip_grad_norm (--clip-grad-norm) is not implemented for {', '.join(other)}; drop "
                                "the option or those optimizers")
        for name in ("schedule", "readout", "attention", "metric", "task_type", "precision"):
            choices = self.choices(name)
            value = getattr(self, name)
            if value is not None and value not in choices:
                raise UserError(f"{name} must be one of {', '.join(choices)}; got {value!r}")
        for name in ("descriptors", "local_mpnn", "descriptor_scaling", "pool_norm"):
            if not isinstance(getattr(self, name), bool):
                flag = name.replace("_", "-")
                raise UserError(f"{name} must be true or false (--{flag} / --no-{flag}), got {getattr(self, name)!r}")
        if self.pool_norm and self.readout == "sum":
            raise UserError("pool_norm normalizes the averaged part of the readout, and --readout sum has none; add "
                            "--no-pool-norm or choose another readout")
        if self.descriptor_scaling and not self.descriptors:
            raise UserError("descriptor_scaling standardizes the molecule descriptors, but descriptors is off; add "
                            "--descriptors or drop --descriptor-scaling")
        self.pair_distance = parse_pair_distance(self.pair_distance)
        if self.attention == "pairs" and self.pair_distance is None:
            self.pair_distance = 3
        if self.attention != "pairs" and self.pair_distance is not None:
            raise UserError("pair_distance only applies to attention='pairs' (--attention pairs); drop it or "
                            "switch the attention mode")
        if self.local_perturbation:
            other = [o for o in self.optimizers if o in PERTURBING and o not in LOCAL_PERTURBATION]
            if other:
                raise UserError(f"local_perturbation (--local-perturbation) applies to "
                                f"{', '.join(LOCAL_PERTURBATION)} only, whose perturbation gradient is used for "
                                f"nothing else; drop it or the optimizers {', '.join(other)}")
        for name in ("epochs", "batch_size", "seeds", "patience", "accumulate"):
            if int(getattr(self, name)) < 1:
                raise UserError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.first_seed < 0:
            raise UserError(f"first_seed must be >= 0, got {self.first_seed}")
        if self.rho is not None and not self.rho >= 0:
            raise UserError(f"rho (--rho) must be >= 0, got {self.rho}; leave it out for each optimizer's default")
        if self.dataset is not None and self.data_path is not None:
            raise UserError("give either a dataset name (--dataset) or a CSV file (--data-path), not both")

    @classmethod
    def choices(cls, name: str) -> tuple:
        """The allowed values of a field (its metadata), e.g. ``TrainConfig.choices("readout")``."""
        return tuple(_FIELDS[name].metadata["choices"] or ())

    @classmethod
    def default(cls, name: str):
        f = _FIELDS[name]
        return f.default_factory() if f.default is MISSING else f.default

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

    def optimizer_kwargs(self) -> dict:
        """The keyword arguments of ``build_optimizer`` this configuration sets."""
        return dict(lr=self.lr, weight_decay=self.weight_decay, rho=self.rho, beta=self.beta, gamma=self.gamma,
                    lam=self.lam, sam_every=self.sam_every, looksam_k=self.looksam_k,
                    looksam_alpha=self.looksam_alpha, aesam_delta=self.aesam_delta, aesam_c=self.aesam_c)

    def model_kwargs(self) -> dict:
        return dict(hidden=self.hidden, layers=self.layers, heads=self.heads, edge_hidden=self.edge_hidden,
                    dropout=self.dropout, ffn_multiplier=self.ffn_multiplier, readout=self.readout,
                    attention=self.attention, local=self.local_mpnn, mol_scaling=self.descriptor_scaling,
                    pool_norm=self.pool_norm)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["split_fractions"] = list(self.split_fractions)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """From a stored configuration; a field it predates gets the value in PREDATED_FIELDS."""
        unknown = sorted(set(d) - set(_FIELDS))
        if unknown:
            raise UserError(f"unknown training config keys {unknown}")
        return cls(**{**PREDATED_FIELDS, **d})


_FIELDS = {f.name: f for f in fields(TrainConfig)}
# Fields added after configurations were first stored (run directories, checkpoints, study.json),
# each with the value that gives what such a configuration ran, not today's default: the bond
# block did not exist before local_mpnn, nor the descriptor scaling before descriptor_scaling, nor
# the pooled BatchNorm before pool_norm.
PREDATED_FIELDS = {"local_mpnn": False, "descriptor_scaling": False, "pool_norm": False}
