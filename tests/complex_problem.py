"""One least-squares problem posed twice: on a complex parameter and on its real view.
torch.optim's convention is that an optimizer steps a complex parameter exactly as it
steps the real view (twice the coordinates); the tests of PAL, SLS, LABPAL and L4 hold
each to it."""
import torch

_gen = torch.Generator().manual_seed(0)
MATRIX = torch.randn(6, 3, 2, generator=_gen, dtype=torch.float64)
TARGETS = [torch.randn(6, 2, generator=_gen, dtype=torch.float64) for _ in range(12)]
START = torch.randn(3, 2, generator=_gen, dtype=torch.float64)


def loss_of_complex(z, i):
    residual = torch.view_as_complex(MATRIX) @ z - torch.view_as_complex(TARGETS[i])
    return (residual.abs() ** 2).mean()


def loss_of_real(w, i):
    return loss_of_complex(torch.view_as_complex(w), i)


def pair():
    """(complex parameter, real parameter) at the same start point."""
    z = torch.nn.Parameter(torch.view_as_complex(START.clone()))
    w = torch.nn.Parameter(START.clone())
    return z, w


def assert_same_trajectory(z, w, tol=1e-10):
    difference = (torch.view_as_real(z.detach()) - w.detach()).abs().max().item()
    moved = (w.detach() - START).abs().max().item()
    assert moved > 1e-3, "the optimizer did not move"
    assert difference < tol, f"complex and real-view runs differ by {difference:.3g}"
