"""Print the ``CURVES`` block of src/polyak/bench/deepobs_baselines.py from DeepOBS's baseline files.

    python scripts/deepobs_baselines_data.py PATH > curves.txt

PATH is a folder holding DeepOBS's per-problem baseline folders (``quadratic_deep/``,
``fmnist_2c2d/``): a checkout of github.com/fsschneider/DeepOBS_Baselines, or a DeepOBS
checkout (its ``baselines/`` folder is used). Nothing is downloaded. Standard library only.
On stderr it lists, per (problem, optimizer), every hyperparameter folder that holds all ten
seeds with its final mean, so the choice of folder can be checked.
"""
from __future__ import annotations

import json
import re
import statistics
import sys
from pathlib import Path

SEEDS = tuple(range(42, 52))  # DeepOBS's baseline seeds
ADAM = "num_epochs__100__batch_size__128__beta1__9.e-01__beta2__9.99e-01__epsilon__1.e-08__lr__"
MOMENTUM = "num_epochs__100__batch_size__128__momentum__9.9e-01__use_nesterov__False__lr__"
SGD = "num_epochs__100__batch_size__128__lr__"
# (our workload, DeepOBS problem, metric key in DeepOBS's JSON, our metric name)
PROBLEMS = (("quadratic-deep", "quadratic_deep", "test_losses", "test_loss"),
            ("fmnist-2c2d", "fmnist_2c2d", "test_accuracies", "test_accuracy"))
# (our optimizer, DeepOBS optimizer, folder prefix, text for hyperparameters besides lr)
OPTIMIZERS = (("sgd", "GradientDescentOptimizer", SGD, ""),
              ("momentum", "MomentumOptimizer", MOMENTUM, ", momentum 0.99"),
              ("adam", "AdamOptimizer", ADAM, ""))
# The folders DeepOBS re-ran on all ten seeds: its tuning's choice (seed 42 only elsewhere).
CHOSEN = {("quadratic_deep", "GradientDescentOptimizer"): "1.5848931925e-02",
          ("quadratic_deep", "MomentumOptimizer"): "2.5118864315e-03",
          ("quadratic_deep", "AdamOptimizer"): "3.9810717055e-02",
          ("fmnist_2c2d", "GradientDescentOptimizer"): "1.5848931925e-01",
          ("fmnist_2c2d", "MomentumOptimizer"): "2.5118864315e-03",
          ("fmnist_2c2d", "AdamOptimizer"): "2.5118864315e-04"}


def seed_files(folder: Path) -> dict:
    files = {}
    for path in sorted(folder.glob("random_seed__*.json")):
        seed = int(re.match(r"random_seed__(\d+)__", path.name).group(1))
        if seed in files:
            raise SystemExit(f"two files for seed {seed} in {folder}")
        files[seed] = path
    return files


def per_epoch(folder: Path, key: str):
    files = seed_files(folder)
    runs = []
    for seed in SEEDS:
        run = json.loads(files[seed].read_text())
        if run["random_seed"] != seed or len(run[key]) != 101:
            raise SystemExit(f"{files[seed]}: seed {run['random_seed']}, {len(run[key])} epochs")
        runs.append(run[key])
    means = tuple(round(statistics.fmean(epoch), 5) for epoch in zip(*runs))
    stds = tuple(round(statistics.stdev(epoch), 5) for epoch in zip(*runs))  # sample std, ddof=1
    return means, stds, tuple(round(run[-1], 5) for run in runs)


def literal(values, indent="            ", per_line=10) -> str:
    rows = [", ".join(repr(v) for v in values[i:i + per_line]) + "," for i in range(0, len(values), per_line)]
    return "\n".join(indent + row for row in rows)


def main(argv) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    root = Path(argv[1])
    if (root / "baselines").is_dir():
        root = root / "baselines"
    blocks = []
    for workload, problem, key, metric in PROBLEMS:
        for name, deepobs, prefix, extra in OPTIMIZERS:
            for folder in sorted((root / problem / deepobs).glob(prefix + "*")):
                if set(SEEDS) <= set(seed_files(folder)):
                    means = per_epoch(folder, key)[0]
                    print(f"{problem} {deepobs} {folder.name}: all seeds, final mean {means[-1]}", file=sys.stderr)
            lr = CHOSEN[(problem, deepobs)]
            folder = root / problem / deepobs / (prefix + lr)
            means, stds, finals = per_epoch(folder, key)
            blocks.append(
                "    Curve(\n"
                f'        workload="{workload}", optimizer="{name}", deepobs_optimizer="{deepobs}", '
                f'hyperparameters="lr {lr}{extra}", seeds=SEEDS,\n'
                f'        metric="{metric}", path="{problem}/{deepobs}/{folder.name}",\n'
                f"        values=(\n{literal(means)}\n        ),\n"
                f"        spread=(\n{literal(stds)}\n        ),\n"
                f"        final_per_seed=({', '.join(repr(v) for v in finals)}),\n"
                "    ),")
    print("CURVES: Tuple[Curve, ...] = (\n" + "\n".join(blocks) + "\n)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
