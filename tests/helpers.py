"""Small helpers shared by the test modules."""
import io

import torch


def through_torch_save(obj):
    """``obj`` after a torch.save / torch.load round trip in memory: what a checkpoint
    written to disk and read back gives (tensors copied, Python state pickled)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


def linear_classification_problem(seed=0, n_batches=40, n_classes=5, n_features=4, batch=8,
                                  labels="random", loss=None):
    """A linear classifier on fixed random batches: ``([W0, b0], loss_fn, batch ids)``
    with ``loss_fn([W, b], i)`` the mean loss of batch i (cross-entropy unless ``loss``
    is given as ``loss(scores, targets)``). ``labels="teacher"``: labels of a linear
    teacher, so the loss can reach 0 (interpolation)."""
    gen = torch.Generator().manual_seed(seed)
    W0 = torch.randn(n_classes, n_features, generator=gen)
    b0 = torch.randn(n_classes, generator=gen)
    X = torch.randn(n_batches, batch, n_features, generator=gen)
    if labels == "teacher":
        teacher = torch.randn(n_classes, n_features, generator=gen)
        Y = (X @ teacher.T).argmax(-1)
    else:
        Y = torch.randint(0, n_classes, (n_batches, batch), generator=gen)
    criterion = torch.nn.functional.cross_entropy if loss is None else loss

    def loss_fn(params, i):
        W, b = params
        return criterion(X[i] @ W.T + b, Y[i])

    return [W0, b0], loss_fn, list(range(n_batches))
