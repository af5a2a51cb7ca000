"""DeepOBS's baseline data (polyak.bench.deepobs_baselines): the shipped curves are
self-consistent, agree with the paper's numbers, and the report shows them as 10-seed means."""
import statistics

import pytest

from polyak.bench.deepobs_baselines import CURVES, PUBLISHED, SEEDS, curves_for
from polyak.bench.report import collect, deepobs_reference_table, plot_curves

import test_bench_report as report_tests

# decimals the paper prints: accuracy as a fraction to 4, the quadratic's loss to 2
DECIMALS = {"fmnist-2c2d": 4, "quadratic-deep": 2}


def _curve(workload, optimizer):
    (curve,) = [c for c in curves_for(workload) if c.optimizer == optimizer]
    return curve


def test_one_curve_per_problem_and_optimizer():
    assert sorted((c.workload, c.optimizer) for c in CURVES) == sorted(
        (w, o) for w in ("quadratic-deep", "fmnist-2c2d") for o in ("sgd", "momentum", "adam"))
    assert {c.metric for c in curves_for("fmnist-2c2d")} == {"test_accuracy"}
    assert {c.metric for c in curves_for("quadratic-deep")} == {"test_loss"}


@pytest.mark.parametrize("curve", CURVES, ids=lambda c: f"{c.workload}-{c.optimizer}")
def test_curve_shape_seeds_and_per_seed_finals(curve):
    assert len(curve.values) == 101 and len(curve.spread) == 101  # epochs 0..100
    assert curve.seeds == SEEDS == tuple(range(42, 52))
    assert all(isinstance(s, int) for s in curve.seeds) and len(set(curve.seeds)) == 10
    assert len(curve.final_per_seed) == len(curve.seeds)
    assert all(s >= 0 for s in curve.spread)
    # the epoch-100 mean and sample std are those of the per-seed finals (each rounded to 5 decimals)
    assert curve.values[-1] == pytest.approx(statistics.fmean(curve.final_per_seed), abs=1.1e-5)
    assert curve.spread[-1] == pytest.approx(statistics.stdev(curve.final_per_seed), abs=2e-5)
    assert curve.path.startswith(curve.workload.replace("-", "_") + "/" + curve.deepobs_optimizer + "/num_epochs__100__")
    assert curve.path.endswith("lr__" + curve.hyperparameters.split()[1].rstrip(","))


def test_epoch_zero_is_the_untrained_model():
    for curve in curves_for("quadratic-deep"):
        # every seed starts at theta = ones on the same test set: DeepOBS's 353.44676, no spread
        assert curve.values[0] == 353.44676 and curve.spread[0] == 0.0
    for curve in curves_for("fmnist-2c2d"):
        # random initialisations differ per seed, all near chance (10 classes)
        assert 0.05 < curve.values[0] < 0.2 and curve.spread[0] > 0


@pytest.mark.parametrize("workload,optimizer", [(w, o) for w in PUBLISHED for o in PUBLISHED[w]])
def test_final_means_agree_with_the_published_numbers(workload, optimizer):
    curve, (mean, std), half = _curve(workload, optimizer), PUBLISHED[workload][optimizer], 0.5 * 10.0 ** -DECIMALS[workload]
    # the ten seeds 42-51: within 1 std of the paper (not always within its rounding: fmnist Adam,
    # quadratic SGD)
    assert abs(curve.values[-1] - mean) <= max(half, curve.spread[-1])
    # the paper's numbers are those of seeds 43-51 to every digit printed (5e-6: per-seed rounding)
    rerun = curve.final_per_seed[1:]
    assert curve.seeds[1:] == tuple(range(43, 52))
    assert abs(statistics.fmean(rerun) - mean) <= half + 5e-6
    if std is not None:
        assert abs(statistics.stdev(rerun) - std) <= half + 1e-5


def test_ten_seed_means_differ_from_the_paper_where_the_docstring_says():
    # documented in the module: over 42-51, fmnist_2c2d Adam ends at 0.9234 ± 0.0029 (paper 0.9228 ± 0.0022)
    adam = _curve("fmnist-2c2d", "adam")
    assert round(adam.values[-1], 4) == 0.9234 and round(adam.spread[-1], 4) == 0.0029
    assert round(_curve("quadratic-deep", "sgd").values[-1], 2) == 87.40


def _records(workload, epochs, metric):
    records = []
    for seed in (0, 1):
        record = report_tests._record(workload, "sgd", 0.1, seed, val=0.9, test=0.9, metric=metric)
        record["workload"]["epochs"] = epochs
        # as the runner records them: epoch 0 (the initial model, no training loss) to the last
        record["epochs"] = [{"epoch": e, "train_loss": None if e == 0 else 0.5, "val": {metric: 0.9},
                             "test": {"accuracy": 0.9, "loss": 0.1}} for e in range(epochs + 1)]
        records.append(record)
    return records


def test_reference_table_rows_are_ten_seed_means_with_std_at_the_compared_epoch():
    text = deepobs_reference_table(collect(_records("fmnist-2c2d", 3, "accuracy")))
    sgd, momentum = _curve("fmnist-2c2d", "sgd"), _curve("fmnist-2c2d", "momentum")
    assert (f"| fmnist-2c2d | DeepOBS sgd (mean of 10 seeds) | {100 * sgd.values[3]:.2f} ± {100 * sgd.spread[3]:.2f} | "
            "92.28 ± 0.19 (paper) |") in text
    # no paper number for Momentum on fmnist_2c2d: the curve's row only
    assert f"| DeepOBS momentum (mean of 10 seeds) | {100 * momentum.values[3]:.2f} ± {100 * momentum.spread[3]:.2f} | - |" in text
    assert "seed 4" not in text.split("\n\n")[0]  # no single-seed rows left
    text = deepobs_reference_table(collect(_records("fmnist-2c2d", 100, "accuracy")))
    assert "| DeepOBS adam (mean of 10 seeds) | 92.34 ± 0.29 | 92.28 ± 0.22 (paper) |" in text
    text = deepobs_reference_table(collect(_records("quadratic-deep", 100, "loss")))
    assert "| DeepOBS momentum (mean of 10 seeds) | 87.05 ± 0.02518 | 87.05 ± 0.03 (paper) |" in text
    assert "seeds 42-51" in text and "seeds 43-51" in text


def test_curve_plot_draws_each_reference_mean_with_a_std_band(tmp_path, monkeypatch):
    import matplotlib.axes

    bands, lines = [], []
    fill_between, plot = matplotlib.axes.Axes.fill_between, matplotlib.axes.Axes.plot
    monkeypatch.setattr(matplotlib.axes.Axes, "fill_between",
                        lambda self, x, low, high, **kw: bands.append((list(x), list(low), list(high)))
                        or fill_between(self, x, low, high, **kw))
    monkeypatch.setattr(matplotlib.axes.Axes, "plot",
                        lambda self, *a, **kw: lines.append(kw.get("label")) or plot(self, *a, **kw))
    (name,) = plot_curves(collect(_records("fmnist-2c2d", 3, "accuracy")), tmp_path)
    assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [l for l in lines if l and l.startswith("DeepOBS")] == [
        f"DeepOBS {o} (mean of 10 seeds, band ± 1 std)" for o in ("sgd", "momentum", "adam")]
    assert len(bands) == 3
    sgd = _curve("fmnist-2c2d", "sgd")
    x, low, high = bands[0]
    assert x == [0, 1, 2, 3]
    assert low == pytest.approx([m - s for m, s in zip(sgd.values[:4], sgd.spread[:4])])
    assert high == pytest.approx([m + s for m, s in zip(sgd.values[:4], sgd.spread[:4])])
