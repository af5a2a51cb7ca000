"""feeding.to_device moves every tensor of a nested batch and keeps its structure."""
import torch

from polyak.bench.feeding import to_device


def test_to_device_keeps_the_structure_of_dict_tuple_and_list_batches():
    batch = {"x": torch.ones(2), "pair": (torch.zeros(1), [torch.arange(3)]), "name": "kept"}
    moved = to_device(batch, torch.device("cpu"))
    assert set(moved) == {"x", "pair", "name"}
    assert torch.equal(moved["x"], batch["x"]) and moved["name"] == "kept"
    assert isinstance(moved["pair"], tuple) and isinstance(moved["pair"][1], list)
    assert torch.equal(moved["pair"][1][0], torch.arange(3))
