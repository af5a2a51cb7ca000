"""Cross-check against pytorch-optimizer's AliG, an independent implementation.

Where the two conventions coincide the trajectories must agree. Where they differ
(documented in the README's "ALI-G against pytorch-optimizer" notes):
- their stabiliser is fixed at 1e-6 (ours: delta, default 1e-5 as in the authors' code): we pass delta=1e-6;
- their ||g||^2 is accumulated in float32 whatever the parameter dtype: we compare in float32;
- they have no lower bound and no clamp at 0 (they assume a loss >= 0): we use a loss >= 0;
- their projection is a no-argument callable run after EACH group's update: one group here;
- they require a closure and read the loss with .item(): we accept loss= without a host read.
"""
import pytest
import torch

from polyak import ALIG

peer = pytest.importorskip("pytorch_optimizer", reason="pytorch-optimizer is a test extra: pip install -e .[test]")


def _problem():
    gen = torch.Generator().manual_seed(3)
    model_ours = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    model_peer = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    model_peer.load_state_dict(model_ours.state_dict())
    X = torch.randn(25, 10, 6, generator=gen)
    Y = torch.randint(0, 3, (25, 10), generator=gen)
    return model_ours, model_peer, X, Y


def _ball(params, radius):
    def project():
        with torch.no_grad():
            total = torch.sqrt(sum((p * p).sum() for p in params))
            if total > radius:
                for p in params:
                    p.mul_(radius / total)
    return project


@pytest.mark.parametrize("max_lr", [None, 0.2])
@pytest.mark.parametrize("momentum,adjusted", [(0.0, False), (0.9, False), (0.9, True)])
@pytest.mark.parametrize("max_norm", [None, 3.0])
def test_alig_agrees_with_pytorch_optimizer_aliG(max_lr, momentum, adjusted, max_norm):
    model_ours, model_peer, X, Y = _problem()
    if max_norm is not None:
        _ball(list(model_ours.parameters()), max_norm)()
        _ball(list(model_peer.parameters()), max_norm)()
    ours = ALIG(model_ours.parameters(), max_lr=max_lr, momentum=momentum, adjusted_momentum=adjusted,
                max_norm=max_norm, delta=1e-6)
    theirs = peer.AliG(model_peer.parameters(), max_lr=max_lr, momentum=momentum, adjusted_momentum=adjusted,
                       projection_fn=_ball(list(model_peer.parameters()), max_norm) if max_norm else None)
    # Unclipped, unconstrained steps with momentum amplify float32 rounding differences
    # (their norm vs ours) from step to step: compare those over fewer steps.
    steps = 10 if (max_lr is None and max_norm is None and momentum > 0) else len(X)
    for x, y in zip(X[:steps], Y[:steps]):
        ours.zero_grad()
        loss = torch.nn.functional.cross_entropy(model_ours(x), y)
        loss.backward()
        ours.step(loss=loss)

        theirs.zero_grad()
        loss_p = torch.nn.functional.cross_entropy(model_peer(x), y)
        loss_p.backward()
        theirs.step(lambda: float(loss_p))
        assert float(ours.param_groups[0]["step_size"]) == pytest.approx(theirs.param_groups[0]["step_size"], rel=1e-4)
    for a, b in zip(model_ours.parameters(), model_peer.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
