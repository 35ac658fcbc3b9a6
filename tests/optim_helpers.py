"""A small deterministic problem to drive optimizers: mixed shapes, several param groups."""
import torch

# total flat sizes 1, 3, 37 (a tiny model for the fault-injection suite), 4k+1 and 278011, each
# split over tensors of mixed shapes
SHAPES = {
    1: [(1,)],
    3: [(3,)],
    37: [(2, 3), (5,), (1,), (3, 2, 2), (13,)],
    4097: [(16, 16), (64,), (3, 7, 5), (1,), (4, 33, 5), (2716,), (59,), (236,)],
    278011: [(512, 512), (123, 45), (7, 3, 11), (1,), (9728,), (372,)],
}


def make_params(total, dtype=torch.float32, device="cpu", seed=0):
    gen = torch.Generator().manual_seed(seed)
    shapes = SHAPES[total]
    assert sum(torch.Size(s).numel() for s in shapes) == total
    return [torch.nn.Parameter((torch.randn(s, generator=gen, dtype=torch.float64) * 0.5).to(dtype).to(device))
            for s in shapes]


def make_targets(params, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype).to(p.device) for p in params]


def param_groups(params, groups):
    """Split params into ``groups`` groups with different lr and weight decay."""
    if groups == 1 or len(params) < 2:
        return [{"params": params}]
    half = max(1, len(params) // 2)
    return [{"params": params[:half]}, {"params": params[half:], "lr": 3e-3, "weight_decay": 0.05}]


def loss_fn(params, targets, batch):
    """A smooth non-quadratic loss whose gradient depends on the point (so SAM's perturbation matters)."""
    total = 0.0
    for i, (p, t) in enumerate(zip(params, targets)):
        c = 1.0 + 0.1 * ((batch + i) % 5)
        total = total + (torch.sin(c * p) * t).sum() + 0.5 * (p * p).sum() / p.numel() ** 0.5
    return total


def run(make_opt, total, steps=10, dtype=torch.float32, device="cpu", groups=2, start=None, opt_state=None):
    """Run ``steps`` closure steps; returns (params, optimizer, losses)."""
    params = make_params(total, dtype, device) if start is None else start
    targets = make_targets(params)
    opt = make_opt(param_groups(params, groups))
    if opt_state is not None:
        opt.load_state_dict(opt_state)
    losses = []
    for batch in range(steps):
        def closure():
            loss = loss_fn(params, targets, batch)
            loss.backward()
            return loss
        losses.append(float(opt.step(closure).detach()))
    return params, opt, losses
