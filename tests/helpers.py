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
