"""Models of the benchmark: sizes, shapes, and the DNC's addressing invariants."""
import pytest
import torch
import torch.nn.functional as F

from polyak.bench.models import (
    DNC,
    MLP,
    BiLSTMClassifier,
    CharLSTM,
    CifarResNet,
    LinearNetwork,
    ResNet8,
    WideResNet,
    allocation_weights,
    content_weights,
)


def count(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("in_channels, size", [(3, 32), (1, 28)])
def test_resnet8_size_and_output(in_channels, size):
    torch.manual_seed(0)
    model = ResNet8(in_channels=in_channels, num_classes=10)
    # 3 stages x 1 basic block, 16/32/64 channels, 1x1 projection shortcuts:
    # 78,042 parameters with 3 input channels (counted by hand in resnet.py's docstring).
    assert 75_000 <= count(model) <= 90_000
    if in_channels == 3:
        assert count(model) == 78_042
    assert model(torch.randn(4, in_channels, size, size)).shape == (4, 10)


def test_resnet8_classes_and_stage_layout():
    model = ResNet8(num_classes=100)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs) == 7  # stem + 2 per block: with the head, 8 weighted layers
    assert [m.out_channels for m in convs] == [16, 16, 16, 32, 32, 64, 64]


def test_resnet_rejects_mismatched_stages():
    with pytest.raises(ValueError, match="blocks_per_stage"):
        CifarResNet((1, 1), (16, 32, 64))


def test_wide_resnet_16_4_size():
    # WRN-16-4 has 2.7M parameters (Zagoruyko & Komodakis 2016, Table 1).
    model = WideResNet(16, 4)
    assert 2.7e6 <= count(model) <= 2.8e6
    assert WideResNet(10, 1, in_channels=1)(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_wide_resnet_rejects_bad_depth():
    with pytest.raises(ValueError, match="6n \\+ 4"):
        WideResNet(depth=15)
    with pytest.raises(ValueError, match="width"):
        WideResNet(depth=16, width=0)


def test_linear_network_is_bias_free_product():
    torch.manual_seed(0)
    net = LinearNetwork(6, [4], 10)
    assert all(name.endswith("weight") for name, _ in net.named_parameters())
    W1, W2 = net.layers[0].weight, net.layers[1].weight
    x = torch.randn(5, 6)
    torch.testing.assert_close(net(x), x @ (W2 @ W1).T)
    assert torch.linalg.matrix_rank((W2 @ W1).detach()) <= 4
    assert LinearNetwork(6, [], 10)(x).shape == (5, 10)
    with pytest.raises(ValueError, match="hidden_sizes"):
        LinearNetwork(6, [0], 10)


def test_mlp_flattens_images():
    assert MLP(784, (32,), 10)(torch.randn(3, 1, 28, 28)).shape == (3, 10)
    with pytest.raises(ValueError, match="in_features"):
        MLP(0)


def test_char_lstm_shapes_and_per_sample_loss():
    from polyak.bench.workloads._common import cross_entropy_per_sample

    model = CharLSTM(81)
    assert sum(1 for _ in model.lstm.parameters()) == 8  # two layers of 4 tensors
    tokens = torch.randint(0, 81, (7, 50))
    logits = model(tokens)
    assert logits.shape == (7, 50, 81)
    targets = torch.randint(0, 81, (7, 50))
    losses = cross_entropy_per_sample(logits, targets)
    assert losses.shape == (7,)
    # per-sample loss = mean over the sequence of the position losses
    manual = torch.stack([F.cross_entropy(logits[i], targets[i]) for i in range(7)])
    torch.testing.assert_close(losses, manual)


def test_bilstm_ignores_padding():
    torch.manual_seed(0)
    model = BiLSTMClassifier(50, num_classes=2).eval()
    text = torch.randint(1, 50, (1, 9))
    padded = torch.cat([text, torch.zeros(1, 6, dtype=torch.long)], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(model(text), model(padded))
        batch = torch.cat([padded, torch.randint(1, 50, (1, 15))])
        torch.testing.assert_close(model(batch)[:1], model(text))


# ------------------------------------------------------------------------ DNC
def test_allocation_closed_form():
    usage = torch.tensor([[0.2, 0.9, 0.5]], dtype=torch.float64)
    # slots by increasing usage: 0 (0.2), 2 (0.5), 1 (0.9)
    expected = torch.tensor([[(1 - 0.2), (1 - 0.9) * 0.2 * 0.5, (1 - 0.5) * 0.2]], dtype=torch.float64)
    torch.testing.assert_close(allocation_weights(usage), expected, atol=1e-5, rtol=0)
    # a free slot takes the whole allocation
    torch.testing.assert_close(allocation_weights(torch.tensor([[1.0, 0.0, 1.0]])), torch.tensor([[0.0, 1.0, 0.0]]), atol=1e-5, rtol=0)


def test_content_weights_are_softmax_of_scaled_cosine():
    torch.manual_seed(0)
    memory, keys, strengths = torch.randn(2, 5, 3), torch.randn(2, 1, 3), torch.tensor([[2.0], [0.5]])
    weights = content_weights(memory, keys, strengths)
    for b in range(2):
        cosine = torch.stack([F.cosine_similarity(memory[b, i], keys[b, 0], dim=0) for i in range(5)])
        torch.testing.assert_close(weights[b, 0], torch.softmax(strengths[b, 0] * cosine, dim=0))


def test_dnc_addressing_weights_are_sub_stochastic():
    torch.manual_seed(0)
    dnc = DNC(input_size=6, output_size=5, memory_slots=8, word_size=4, num_reads=2)
    state = dnc.initial_state(3)
    with torch.no_grad():
        for _ in range(12):
            # large inputs push gates to extremes, where sums are most likely to break
            _, state = dnc.step(5 * torch.randn(3, 6), state)
            for weights in (state.write_weights, state.read_weights):
                assert (weights >= 0).all()
                assert (weights.sum(-1) <= 1 + 1e-5).all()
            assert ((state.usage >= 0) & (state.usage <= 1 + 1e-6)).all()
            assert (state.link >= 0).all()
            assert torch.diagonal(state.link, dim1=1, dim2=2).abs().max() == 0
            assert (state.link.sum(-1) <= 1 + 1e-5).all()
            assert (state.precedence.sum(-1) <= 1 + 1e-5).all()


def test_dnc_forward_shapes_and_gradients():
    torch.manual_seed(0)
    dnc = DNC(input_size=6, output_size=5)
    out = dnc(torch.randn(4, 9, 6))
    assert out.shape == (4, 9, 5)
    assert out.abs().max() <= 20
    out.pow(2).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in dnc.parameters())
    with pytest.raises(ValueError, match="batch, time, features"):
        dnc(torch.randn(4, 6))
    with pytest.raises(ValueError, match="memory_slots"):
        DNC(6, 5, memory_slots=0)
