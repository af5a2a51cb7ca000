"""DeepOBS's test problems as DeepOBS defines them: checked against numbers from
DeepOBS itself (its baseline runs' epoch-0 test loss) and its architecture definitions."""
import numpy as np
import pytest
import torch

from polyak.bench.models.deepobs import (DeepOBSMLP, LogReg, NoisyQuadratic, TwoConvTwoDense, deep_quadratic_hessian,
                                         haar_rotation)
from polyak.bench.workloads import get_workload


def test_haar_rotation_is_a_rotation():
    rotation = haar_rotation(7, np.random.RandomState(3))
    assert np.allclose(rotation @ rotation.T, np.eye(7), atol=1e-12)
    assert np.linalg.det(rotation) == pytest.approx(1.0)


def test_quadratic_deep_reproduces_deepobs_initial_test_loss():
    # DeepOBS's baseline run (baselines/quadratic_deep/AdamOptimizer/...lr__3.98e-02/random_seed__44,
    # github.com/fsschneider/DeepOBS at 873bbc2) records test loss 353.44676 before training: theta = ones,
    # mean over the 7 full test batches (896 points). The same Hessian and test points give the same number.
    instance = get_workload("quadratic-deep").build("paper", 0, None)
    assert len(instance.test) == 896 and len(instance.train) == 1000
    assert instance.evaluate(instance.model, instance.test)["loss"] == pytest.approx(353.44676, abs=2e-3)
    hessian = deep_quadratic_hessian()
    eigenvalues = np.linalg.eigvalsh(hessian)
    assert ((eigenvalues > 0) & (eigenvalues < 1)).sum() == 90 and ((eigenvalues > 30) & (eigenvalues < 60)).sum() == 10


def test_quadratic_deep_has_a_test_loss_floor_near_87_not_0():
    instance = get_workload("quadratic-deep").build("paper", 0, None)
    with torch.no_grad():  # the best a model can do with the training data: theta at its mean
        instance.model.theta.copy_(instance.train.inputs.mean(0))
    floor = instance.evaluate(instance.model, instance.test)["loss"]
    assert 86.5 < floor < 88.0  # DeepOBS's tuned Momentum ends at 87.05 (DeepOBS paper, Table 2)


def test_per_sample_quadratic_loss_is_the_closed_form():
    hessian = np.diag([1.0, 2.0])
    model = NoisyQuadratic(hessian)
    x = torch.tensor([[0.0, 0.0], [1.0, 3.0]])
    assert torch.allclose(model(x), torch.tensor([0.5 * (1 + 2), 0.5 * (0 + 2 * 4)]))


@pytest.mark.parametrize("make,parameters", [(LogReg, 7850), (DeepOBSMLP, 1_336_610), (TwoConvTwoDense, 3_274_634)])
def test_deepobs_architectures_have_deepobs_sizes(make, parameters):
    torch.manual_seed(0)
    model = make()
    assert sum(p.numel() for p in model.parameters()) == parameters
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_deepobs_initialisations():
    torch.manual_seed(0)
    logreg = LogReg()
    assert all((p == 0).all() for p in logreg.parameters())
    mlp = DeepOBSMLP()
    for layer in (m for m in mlp.modules() if isinstance(m, torch.nn.Linear)):
        assert (layer.bias == 0).all() and layer.weight.abs().max() <= 2 * 3e-2
        assert layer.weight.std().item() == pytest.approx(3e-2 * 0.88, rel=0.1)  # a 2-std truncated normal's std
    cnn = TwoConvTwoDense()
    for layer in (m for m in cnn.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))):
        assert (layer.bias == 0.05).all() and layer.weight.abs().max() <= 2 * 0.05


def test_deepobs_budgets_are_deepobs_defaults():
    for name, epochs in (("quadratic-deep", 100), ("mnist-logreg", 50), ("mnist-mlp", 100), ("fmnist-mlp", 100),
                         ("fmnist-2c2d", 100)):
        paper = get_workload(name).budgets["paper"]
        assert (paper.epochs, paper.batch_size, paper.drop_last, paper.train_subset) == (epochs, 128, True, None)
    assert get_workload("mnist-mlp").target == 0.97
