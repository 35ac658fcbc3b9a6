"""CPU cost of model variants side by side: forward, backward and an Adam step on the same batches.

    python scripts/model_cost.py --dataset bbbp --variant base local_mpnn=false --variant local

Each ``--variant NAME [FIELD=VALUE ...]`` is the default TrainConfig with those fields changed.
The variants take turns batch set by batch set for ``--rounds`` rounds (the first is a warm-up
and not counted), so a change in machine load falls on all of them; the printed ratios are the
process CPU seconds of each variant over the first one's.
"""
from __future__ import annotations

import argparse
import time

import torch

from graphsam_ext.data import collate
from graphsam_ext.train import TrainConfig
from graphsam_ext.train.experiment import load_data
from graphsam_ext.train.loop import build_model


def _value(text: str):
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_variant(items: list[str]) -> tuple[str, dict]:
    name, fields = items[0], {}
    for item in items[1:]:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--variant {name}: {item!r} is not FIELD=VALUE")
        fields[key.replace("-", "_")] = _value(value)
    return name, fields


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="bbbp")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--variant", nargs="+", action="append", required=True, metavar="NAME [FIELD=VALUE]")
    p.add_argument("--batches", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--rounds", type=int, default=4)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    variants = {}
    for items in args.variant:
        name, fields = parse_variant(items)
        cfg = TrainConfig(dataset=args.dataset, data_dir=args.data_dir, **fields)
        dataset = load_data(cfg)  # each variant's own featurizer (pairs, descriptors)
        n = min(len(dataset), args.batches * args.batch_size)
        graphs = [dataset[i] for i in range(n)]
        batches = [collate(graphs[i:i + args.batch_size]) for i in range(0, n, args.batch_size)]
        model = build_model(cfg, dataset)
        variants[name] = (model, torch.optim.Adam(model.parameters()), fields, batches)
    cpu = dict.fromkeys(variants, 0.0)
    for rnd in range(args.rounds):
        for name, (model, opt, _, batches) in variants.items():
            start = time.process_time()
            for batch in batches:
                model(batch).float().pow(2).mean().backward()
                opt.step()
                opt.zero_grad()
            if rnd:
                cpu[name] += time.process_time() - start
    first = next(iter(cpu.values()))
    print(f"{args.dataset}: {args.batches} batches of {args.batch_size}, {args.rounds - 1} counted rounds, one thread")
    for name, (model, _, fields, _) in variants.items():
        print(f"  {name:<16} {model.num_parameters():>8,} parameters  {cpu[name]:7.2f} CPU s  "
              f"{cpu[name] / first:5.2f}x  {fields or '(defaults)'}")


if __name__ == "__main__":
    main()
