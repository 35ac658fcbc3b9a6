"""chemprop's own command line, clocked as ``chemprop_launcher.py`` does, with our optimizer.

Executed by the Python of chemprop's virtual environment, never imported by graphsam_ext::

    .venv-chemprop/bin/python chemprop_optimizer_launcher.py --optimizer graphsam \\
        [--optimizer-args '{"rho": 0.05}'] [--graphsam-ext-path DIR] TIMING.json train ...(chemprop's flags)

Every model chemprop's CLI passes to ``Trainer.fit`` first goes through
:func:`graphsam_ext.integrations.chemprop.use_optimizer` (our GraphSAM, SAM or ASAM in place of
chemprop's Adam, chemprop's learning-rate schedule kept, GraphSAM's epochs from Lightning).
Everything else, the flags, the timing callback and TIMING.json, is ``chemprop_launcher.py``'s;
TIMING.json gets one more entry, ``optimizer``: the name, its options and, per fit, the
optimizer class, its closure calls (forward + backward passes) and training steps.

``--graphsam-ext-path`` is the directory holding the ``graphsam_ext`` package; it is appended
to ``sys.path``, so chemprop's venv needs only chemprop (its own packages come first).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _parse(argv: list[str]):
    p = argparse.ArgumentParser(prog="chemprop_optimizer_launcher.py",
                                description="chemprop's CLI with graphsam-ext's optimizer")
    p.add_argument("--optimizer", required=True, help="graphsam, sam or asam (adam: chemprop's own)")
    p.add_argument("--optimizer-args", default="{}", help="JSON object of the optimizer's options")
    p.add_argument("--graphsam-ext-path", default=None, help="directory that holds the graphsam_ext package")
    p.add_argument("rest", nargs=argparse.REMAINDER, help="TIMING.json train [chemprop train flags]")
    opts = p.parse_args(argv)
    try:
        options = json.loads(opts.optimizer_args)
    except json.JSONDecodeError as exc:
        p.error(f"--optimizer-args: not JSON ({exc})")
    if not isinstance(options, dict):
        p.error("--optimizer-args: expected a JSON object such as '{\"rho\": 0.05}'")
    if len(opts.rest) < 2:
        p.error("expected TIMING.json train [chemprop train flags] after the options")
    return opts, options


def main(argv: list[str]) -> int:
    opts, options = _parse(argv)
    if opts.graphsam_ext_path:
        sys.path.append(opts.graphsam_ext_path)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import chemprop_launcher
    import lightning.pytorch as pl

    from graphsam_ext.integrations.chemprop import use_optimizer

    fits: list = []
    base = pl.Trainer

    class OptimizerTrainer(base):
        def fit(self, model, *args, **kwargs):
            if getattr(model, "_graphsam_optimizer", None) is None:
                use_optimizer(model, opts.optimizer, **options)
            result = super().fit(model, *args, **kwargs)
            opt = self.optimizers[0] if self.optimizers else None
            fits.append({"class": type(opt).__name__, "closure_calls": getattr(opt, "closure_calls", None),
                         "steps": int(self.global_step)})
            return result

    pl.Trainer = OptimizerTrainer
    timing_path = opts.rest[0]
    try:
        return chemprop_launcher.main(opts.rest)
    finally:
        path = Path(timing_path)
        if path.is_file():
            info = json.loads(path.read_text())
            info["optimizer"] = {"name": opts.optimizer, "options": options, "fits": fits}
            path.write_text(json.dumps(info, indent=2))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
