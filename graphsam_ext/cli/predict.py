"""``graphsam predict``: predictions for new SMILES from a checkpoint or a run directory."""
from __future__ import annotations

import sys
from pathlib import Path

from graphsam_ext.cli.common import setup_execution
from graphsam_ext.errors import UserError


def add_parser(sub, add_execution_options) -> None:
    p = sub.add_parser("predict", help="predict new SMILES with a trained model",
                       description="Predict the targets of new SMILES with a checkpoint (or every best.pt of a run "
                                   "directory, averaged). Invalid SMILES are reported per row.")
    p.add_argument("--checkpoint", required=True, metavar="PATH", help="a best.pt file or a run directory")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", "-i", "--test-path", dest="data", metavar="CSV", help="CSV file with a SMILES column")
    src.add_argument("--smiles", nargs="+", metavar="SMILES", help="SMILES strings given on the command line")
    p.add_argument("--smiles-column", "-s", metavar="COL",
                   help="SMILES column of --data (default: a column named smiles, else the first)")
    p.add_argument("--output", "-o", "--preds-path", dest="output", metavar="CSV",
                   help="where to write the predictions (default: <data>.predictions.csv, or stdout for --smiles)")
    p.add_argument("--overwrite", action="store_true", help="replace --output when it exists")
    p.add_argument("--batch-size", type=int, default=256, help="molecules per batch (default 256)")
    add_execution_options(p)
    p.set_defaults(handler=run)


def run(args) -> int:
    from graphsam_ext.train.predict import find_checkpoints, predict_smiles, read_smiles_csv, write_predictions

    device = setup_execution(args)
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    checkpoints = find_checkpoints(args.checkpoint)
    if args.data:
        smiles, column = read_smiles_csv(args.data, args.smiles_column)
        output = Path(args.output) if args.output else Path(args.data).with_suffix(".predictions.csv")
    else:
        smiles, column = list(args.smiles), "smiles"
        output = Path(args.output) if args.output else None
    if output is not None and output.exists() and not args.overwrite:
        raise UserError(f"--output {output} already exists; pass --overwrite to replace it or choose another --output")
    pred = predict_smiles(smiles, checkpoints, device=device, batch_size=args.batch_size)
    if output is None:
        write_predictions(pred, sys.stdout, column)
    else:
        write_predictions(pred, output, column)
    if not args.quiet:
        print(f"{len(smiles)} rows predicted with {len(checkpoints)} checkpoint(s)"
              + (f"; written to {output}" if output else ""), file=sys.stderr)
    if pred.num_invalid:
        bad = [f"row {i + 1} ({s!r}): {e}" for i, (s, e) in enumerate(zip(pred.smiles, pred.errors)) if e]
        shown = "; ".join(bad[:10]) + (f"; ... {len(bad) - 10} more" if len(bad) > 10 else "")
        print(f"{pred.num_invalid} invalid SMILES (no prediction): {shown}", file=sys.stderr)
    return 0
