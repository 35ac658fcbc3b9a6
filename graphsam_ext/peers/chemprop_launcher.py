"""Run chemprop's own command line with a clock on its training epochs.

This file is executed by the Python of chemprop's virtual environment, never imported by
graphsam_ext (importing it imports nothing from chemprop or Lightning)::

    .venv-chemprop/bin/python chemprop_launcher.py TIMING.json train --data-path ... (chemprop's flags)

Everything after TIMING.json goes to chemprop's CLI unchanged (``chemprop.cli.main.main``, the
function behind the ``chemprop`` command). The only addition is a Lightning callback appended to
every ``Trainer`` chemprop builds: per epoch it records the seconds from the epoch's first
training batch to the start of its validation (the training batches only, as ``graphsam train``
counts ``train_seconds``) and to the epoch's end (training plus validation and checkpointing).
TIMING.json gets one entry per ``Trainer.fit`` call (its epochs, the number of training samples and
of model parameters), plus chemprop's, Lightning's and torch's versions, torch's thread count and
the wall time of the whole command.
"""
from __future__ import annotations

import json
import sys
import time


def _timer_callback(fits: list):
    from lightning.pytorch import Callback

    class EpochClock(Callback):
        def __init__(self):
            self.record = {"epochs": []}
            self._start = self._cpu_start = None
            self._epoch = None

        def on_fit_start(self, trainer, pl_module):
            self.record["train_samples"] = None
            self.record["num_parameters"] = sum(p.numel() for p in pl_module.parameters())
            fits.append(self.record)

        def on_train_epoch_start(self, trainer, pl_module):
            self._start, self._cpu_start = time.perf_counter(), time.process_time()
            self._epoch = {"epoch": int(trainer.current_epoch)}

        def _close_training(self):
            if self._epoch is not None and "train_seconds" not in self._epoch:
                self._epoch["train_seconds"] = time.perf_counter() - self._start
                self._epoch["train_cpu_seconds"] = time.process_time() - self._cpu_start

        def on_validation_start(self, trainer, pl_module):
            if not trainer.sanity_checking:
                self._close_training()

        def on_train_epoch_end(self, trainer, pl_module):
            if self._epoch is None:
                return
            self._close_training()
            self._epoch["epoch_seconds"] = time.perf_counter() - self._start
            self.record["epochs"].append(self._epoch)
            self._epoch = None
            if self.record["train_samples"] is None and trainer.train_dataloader is not None:
                self.record["train_samples"] = len(trainer.train_dataloader.dataset)

    return EpochClock


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print("usage: chemprop_launcher.py TIMING.json train [chemprop train flags]", file=sys.stderr)
        return 2
    timing_path, chemprop_args = argv[0], argv[1:]
    import lightning.pytorch as pl
    import torch
    from importlib.metadata import version

    fits: list = []
    clock = _timer_callback(fits)
    base = pl.Trainer

    class ClockedTrainer(base):
        def __init__(self, *args, callbacks=None, **kwargs):
            callbacks = list(callbacks or []) + [clock()]
            super().__init__(*args, callbacks=callbacks, **kwargs)

    pl.Trainer = ClockedTrainer
    from chemprop.cli.main import main as chemprop_main

    sys.argv = ["chemprop", *chemprop_args]
    start = time.perf_counter()
    try:
        status = chemprop_main()
    finally:
        info = {"chemprop": version("chemprop"), "torch": torch.__version__, "lightning": version("lightning"),
                "torch_threads": torch.get_num_threads(), "wall_seconds": time.perf_counter() - start,
                "fits": fits}
        with open(timing_path, "w") as fh:
            json.dump(info, fh, indent=2)
    return int(status or 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
