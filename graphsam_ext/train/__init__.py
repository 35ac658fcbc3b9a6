"""Training: optimizers and LR schedules by name, masked losses, metrics, the epoch loop with
model selection, early stopping and exact resume, multi-seed experiments and their results.

Importing this package does not import RDKit; data are loaded lazily by the experiment code.
"""
from graphsam_ext.train.checkpoint import load_checkpoint, save_checkpoint
from graphsam_ext.train.config import SPLIT_NAMES, TrainConfig
from graphsam_ext.train.experiment import format_table, run_experiment, summarize
from graphsam_ext.train.losses import masked_bce, masked_mse
from graphsam_ext.train.loop import SeedRun, SplitData, build_model, epoch_order, predict_batches
from graphsam_ext.train.metrics import evaluate, mae, prc_auc, rmse, roc_auc
from graphsam_ext.train.optimizers import OPTIMIZER_NAMES, build_optimizer
from graphsam_ext.train.schedules import SCHEDULE_NAMES, StepSchedule, lr_at
from graphsam_ext.train.targets import TargetScaler

__all__ = [
    "TrainConfig", "SPLIT_NAMES", "OPTIMIZER_NAMES", "SCHEDULE_NAMES",
    "build_optimizer", "StepSchedule", "lr_at", "masked_bce", "masked_mse",
    "roc_auc", "prc_auc", "rmse", "mae", "evaluate", "TargetScaler",
    "SeedRun", "SplitData", "build_model", "epoch_order", "predict_batches",
    "run_experiment", "summarize", "format_table", "save_checkpoint", "load_checkpoint",
]
