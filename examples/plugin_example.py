"""A plugin for ``polyak bench``: one workload, one label-noise variant, one optimizer.

    polyak data fetch mlbench
    polyak bench run --plugin examples/plugin_example.py --workload satimage-rbf \
        --optimizer polyak-sgd --optimizer alig --optimizer sgd

The workload is RBF-kernel classification of Statlog satimage (mlbench's
Satellite); the optimizer is a 20-line clipped Polyak step without momentum.
"""
import torch

from polyak import OptimizerSpec
from polyak.bench.datasets import load_satellite
from polyak.bench.optimizers import register_bench_optimizer
from polyak.bench.workloads import Budget, Workload, helpers, register_workload
from polyak.bench.workloads.mnist import resnet8_workload


# ---------------------------------------------------------------- a workload
def build(size, seed, data_dir, budget):
    # budget: the harness's Budget for this size (epochs, batch size, subsets); use it, not your own
    X, y, classes = load_satellite(data_dir=data_dir)
    return helpers.build_tabular(X, y, budget, seed, num_classes=len(classes), rbf_sigma=4.0)


register_workload(Workload(
    name="satimage-rbf", metric="accuracy", lower_bound=0.0, interpolating=True, data="mlbench",
    budgets={"quick": Budget(epochs=5, batch_size=100, train_subset=1000, test_subset=500),
             "lite": Budget(epochs=20, batch_size=100, train_subset=3000),
             "paper": Budget(epochs=35, batch_size=100)},
    build=build, summary="RBF-kernel (sigma 4) multinomial logistic regression on Statlog satimage"))

# a built-in workload with another parameter: 40% of Fashion-MNIST's training labels flipped
register_workload(resnet8_workload("fmnist-resnet8-noisy40", "fashion-mnist", label_noise=0.4))


# --------------------------------------------------------------- an optimizer
class PolyakSGD(torch.optim.Optimizer):
    """x <- x - min(max_lr, (loss - lower_bound) / ||g||^2) g."""

    def __init__(self, params, max_lr=1.0, lower_bound=0.0):
        super().__init__(params, dict(max_lr=max_lr, lower_bound=lower_bound))

    @torch.no_grad()
    def step(self, loss):
        for group in self.param_groups:
            grads = [p.grad for p in group["params"] if p.grad is not None]
            sq_norm = sum(float(g.pow(2).sum()) for g in grads)
            polyak = max(0.0, float(loss) - group["lower_bound"]) / (sq_norm + 1e-12)
            # step_size and clipped: the report's share of steps clipped at max_lr and at exactly 0
            group["step_size"], group["clipped"] = min(polyak, group["max_lr"]), polyak > group["max_lr"]
            for p in group["params"]:
                if p.grad is not None:
                    p.add_(p.grad, alpha=-group["step_size"])
        return loss


register_bench_optimizer(OptimizerSpec(
    name="polyak-sgd", factory=PolyakSGD, needs=frozenset({"loss"}), passes=(1, 1), defaults={"max_lr": 1.0},
    step_size_param="max_lr", step_size_grid=(0.1, 1.0, 10.0), summary="clipped Polyak step, no momentum (example)"))
