"""Train a small MLP on scikit-learn's bundled digits (real data, 1797 8x8 images)
with ALI-G, ALI-G+, SPS and torch SGD, and print a comparison table.

    python examples/digits.py [--epochs 30] [--seed 0]

Each optimizer uses one setting from its paper's grid, no tuning here; the table
shows test accuracy, final training loss and time per step relative to SGD.
"""
from __future__ import annotations

import argparse
import time

import torch
from torch import nn

import polyak


def load_digits_split(seed: int):
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = torch.tensor(X, dtype=torch.float32)
    y = torch.tensor(y, dtype=torch.long)
    perm = torch.randperm(len(X), generator=torch.Generator().manual_seed(seed))
    X, y = X[perm], y[perm]
    n_train = int(0.8 * len(X))
    mean, std = X[:n_train].mean(0), X[:n_train].std(0) + 1e-6
    X = (X - mean) / std
    return (X[:n_train], y[:n_train]), (X[n_train:], y[n_train:])


def make_model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))


def train(name, make_opt, train_set, test_set, epochs, seed, batch_size=64):
    X, y = train_set
    model = make_model(seed)
    opt = make_opt(model.parameters(), len(X), epochs)
    per_sample = isinstance(opt, getattr(polyak, "ALIGPlus", ()))
    gen = torch.Generator().manual_seed(seed + 1)
    steps, t_step = 0, 0.0
    for _ in range(epochs):
        order = torch.randperm(len(X), generator=gen)
        for start in range(0, len(X), batch_size):
            idx = order[start:start + batch_size]
            losses = nn.functional.cross_entropy(model(X[idx]), y[idx], reduction="none")
            opt.zero_grad()
            losses.mean().backward()
            t0 = time.perf_counter()
            if per_sample:
                opt.step(loss=losses.detach(), index=idx)
            elif isinstance(opt, torch.optim.SGD):
                opt.step()
            else:
                opt.step(loss=losses.mean().detach())
            t_step += time.perf_counter() - t0
            steps += 1
        if per_sample:
            opt.end_epoch()
    with torch.no_grad():
        train_loss = nn.functional.cross_entropy(model(X), y).item()
        acc = (model(test_set[0]).argmax(1) == test_set[1]).float().mean().item()
    return {"optimizer": name, "test_acc": acc, "train_loss": train_loss, "step_ms": 1e3 * t_step / steps}


OPTIMIZERS = {
    "SGD (lr 0.1, momentum 0.9)": lambda p, n, e: torch.optim.SGD(p, lr=0.1, momentum=0.9),
    "ALI-G (max_lr 1, momentum 0.9)": lambda p, n, e: polyak.ALIG(p, max_lr=1.0, momentum=0.9),
    "ALI-G infinity": lambda p, n, e: polyak.ALIG(p, max_lr=None),
}
if hasattr(polyak, "ALIGPlus"):
    OPTIMIZERS["ALI-G+ (max_lr 1, momentum 0.9)"] = lambda p, n, e: polyak.ALIGPlus(
        p, max_lr=1.0, num_samples=n, epochs=e, K=5, momentum=0.9)
if hasattr(polyak, "SPS"):
    OPTIMIZERS["SPS (constant, c 0.5, eta_max 1)"] = lambda p, n, e: polyak.SPS(p, c=0.5, eta_max=1.0, mode="constant")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    train_set, test_set = load_digits_split(args.seed)
    rows = [train(name, make, train_set, test_set, args.epochs, args.seed) for name, make in OPTIMIZERS.items()]
    sgd_ms = rows[0]["step_ms"]
    print(f"digits (sklearn), MLP 64-128-10, {args.epochs} epochs, batch 64, seed {args.seed}")
    print(f"{'optimizer':36s} {'test acc':>9s} {'train loss':>11s} {'step / SGD':>11s}")
    for r in rows:
        print(f"{r['optimizer']:36s} {100 * r['test_acc']:8.2f}% {r['train_loss']:11.2e} {r['step_ms'] / sgd_ms:11.2f}")
    return rows


if __name__ == "__main__":
    main()
