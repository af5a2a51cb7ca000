r"""A compact Differentiable Neural Computer (Graves et al., Nature 2016, Methods).

One LSTM controller, one write head, ``num_reads`` read heads and an N x W
memory. At each time step the controller reads [x_t; r_{t-1}] and emits an
interface vector, parsed into read keys k^r and strengths beta^r, a write key
k^w and strength beta^w, erase vector e, write vector v, free gates f, an
allocation gate g^a, a write gate g^w and read modes pi. With C(M, k, beta) the
softmax over rows of beta * cosine(M[i], k):

    retention   psi   = prod_i (1 - f_i w^r_{t-1,i})
    usage       u_t   = (u_{t-1} + w^w_{t-1} - u_{t-1} * w^w_{t-1}) * psi
    allocation  a[phi_j] = (1 - u[phi_j]) prod_{i<j} u[phi_i]   (phi: slots sorted by usage)
    write       w^w_t = g^w (g^a a_t + (1 - g^a) C(M_{t-1}, k^w, beta^w))
    memory      M_t   = M_{t-1} * (1 - w^w_t e^T) + w^w_t v^T
    link        L_t[i,j] = (1 - w^w[i] - w^w[j]) L_{t-1}[i,j] + w^w[i] p_{t-1}[j],  L_t[i,i] = 0
    precedence  p_t   = (1 - sum_i w^w[i]) p_{t-1} + w^w_t
    read        w^r_t = pi_1 (L_t^T w^r_{t-1}) + pi_2 C(M_t, k^r, beta^r) + pi_3 (L_t w^r_{t-1})
                r_t   = M_t^T w^r_t
    output      y_t   = W [h_t; r_t]

(backward, content, forward modes in that order, as in the paper). Deviations:
usage is kept in [eps, 1] before sorting (as DeepMind's code does) so ties do
not make the allocation's sort ill-defined, and outputs are clipped to
[-clip_value, clip_value] (DeepMind's default 20) so that very large steps
cannot produce infinite losses.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_USAGE_EPS = 1e-6
_COSINE_EPS = 1e-6


class DNCState(NamedTuple):
    """Recurrent state; every tensor has the batch as its first dimension."""

    controller: Tuple[Tensor, Tensor]  # LSTMCell (h, c), each [B, hidden]
    memory: Tensor  # [B, N, W]
    usage: Tensor  # [B, N]
    link: Tensor  # [B, N, N]
    precedence: Tensor  # [B, N]
    read_weights: Tensor  # [B, R, N]
    write_weights: Tensor  # [B, N]
    read_vectors: Tensor  # [B, R, W]


def content_weights(memory: Tensor, keys: Tensor, strengths: Tensor) -> Tensor:
    """Softmax over memory rows of strength * cosine(row, key).

    memory [B, N, W], keys [B, H, W], strengths [B, H] -> weights [B, H, N].
    """
    similarity = torch.einsum("bhw,bnw->bhn", F.normalize(keys, dim=-1, eps=_COSINE_EPS), F.normalize(memory, dim=-1, eps=_COSINE_EPS))
    return torch.softmax(similarity * strengths.unsqueeze(-1), dim=-1)


def allocation_weights(usage: Tensor) -> Tensor:
    """a[phi_j] = (1 - u[phi_j]) * prod_{i<j} u[phi_i] with phi the slots in increasing usage."""
    usage = _USAGE_EPS + (1 - _USAGE_EPS) * usage
    sorted_usage, order = torch.sort(usage, dim=-1)
    exclusive_product = torch.cumprod(torch.cat([torch.ones_like(sorted_usage[:, :1]), sorted_usage[:, :-1]], dim=-1), dim=-1)
    sorted_allocation = (1 - sorted_usage) * exclusive_product
    return torch.zeros_like(usage).scatter(-1, order, sorted_allocation)


class DNC(nn.Module):
    """Differentiable Neural Computer with an LSTM controller.

    Args:
        input_size: features per time step.
        output_size: outputs per time step (logits).
        hidden_size: LSTM controller units (DeepMind's repeat-copy default: 64).
        memory_slots: N, rows of memory (default 16).
        word_size: W, width of each row (default 16).
        num_reads: R, read heads (default 1).
        clip_value: outputs are clipped to [-clip_value, clip_value]; None disables.

    ``forward(x)`` takes [batch, time, input_size] and returns [batch, time, output_size];
    ``step(x_t, state)`` runs one time step (``initial_state(batch)`` starts one).
    """

    def __init__(
        self,
        input_size: int,
        output_size: int,
        hidden_size: int = 64,
        memory_slots: int = 16,
        word_size: int = 16,
        num_reads: int = 1,
        clip_value: Optional[float] = 20.0,
    ):
        super().__init__()
        for name, value in (("input_size", input_size), ("output_size", output_size), ("hidden_size", hidden_size),
                            ("memory_slots", memory_slots), ("word_size", word_size), ("num_reads", num_reads)):
            if value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value}")
        if clip_value is not None and clip_value <= 0:
            raise ValueError(f"clip_value must be positive or None, got {clip_value}")
        self.memory_slots, self.word_size, self.num_reads = memory_slots, word_size, num_reads
        self.clip_value = clip_value
        self.controller = nn.LSTMCell(input_size + num_reads * word_size, hidden_size)
        R, W = num_reads, word_size
        # read keys, read strengths, write key, write strength, erase, write vector,
        # free gates, allocation gate, write gate, read modes
        self._interface_sizes = (R * W, R, W, 1, W, W, R, 1, 1, 3 * R)
        self.interface = nn.Linear(hidden_size, sum(self._interface_sizes))
        self.output = nn.Linear(hidden_size + R * W, output_size)

    def initial_state(self, batch_size: int, device=None, dtype=None) -> DNCState:
        dtype = dtype or self.output.weight.dtype
        device = device or self.output.weight.device
        zeros = lambda *shape: torch.zeros(*shape, device=device, dtype=dtype)  # noqa: E731
        B, N, W, R, H = batch_size, self.memory_slots, self.word_size, self.num_reads, self.controller.hidden_size
        return DNCState(
            controller=(zeros(B, H), zeros(B, H)),
            memory=zeros(B, N, W),
            usage=zeros(B, N),
            link=zeros(B, N, N),
            precedence=zeros(B, N),
            read_weights=zeros(B, R, N),
            write_weights=zeros(B, N),
            read_vectors=zeros(B, R, W),
        )

    def _parse_interface(self, hidden: Tensor):
        B, R, W = hidden.shape[0], self.num_reads, self.word_size
        parts = torch.split(self.interface(hidden), self._interface_sizes, dim=-1)
        read_keys, read_strengths, write_key, write_strength, erase, write_vector, free_gates, alloc_gate, write_gate, modes = parts
        return (
            read_keys.view(B, R, W),
            1 + F.softplus(read_strengths),  # "oneplus": strengths >= 1
            write_key.view(B, 1, W),
            1 + F.softplus(write_strength),
            torch.sigmoid(erase),
            write_vector,
            torch.sigmoid(free_gates),
            torch.sigmoid(alloc_gate),
            torch.sigmoid(write_gate),
            torch.softmax(modes.view(B, R, 3), dim=-1),
        )

    def step(self, x: Tensor, state: DNCState) -> Tuple[Tensor, DNCState]:
        B = x.shape[0]
        h, c = self.controller(torch.cat([x, state.read_vectors.flatten(1)], dim=-1), state.controller)
        (read_keys, read_strengths, write_key, write_strength, erase, write_vector,
         free_gates, alloc_gate, write_gate, modes) = self._parse_interface(h)

        retention = torch.prod(1 - free_gates.unsqueeze(-1) * state.read_weights, dim=1)
        usage = (state.usage + state.write_weights - state.usage * state.write_weights) * retention

        allocation = allocation_weights(usage)
        write_content = content_weights(state.memory, write_key, write_strength).squeeze(1)
        write_weights = write_gate * (alloc_gate * allocation + (1 - alloc_gate) * write_content)

        memory = state.memory * (1 - write_weights.unsqueeze(-1) * erase.unsqueeze(1)) + write_weights.unsqueeze(-1) * write_vector.unsqueeze(1)

        link = (1 - write_weights.unsqueeze(2) - write_weights.unsqueeze(1)) * state.link + write_weights.unsqueeze(2) * state.precedence.unsqueeze(1)
        link = link * (1 - torch.eye(self.memory_slots, device=x.device, dtype=link.dtype))
        precedence = (1 - write_weights.sum(-1, keepdim=True)) * state.precedence + write_weights

        forward = torch.einsum("bij,brj->bri", link, state.read_weights)  # L w
        backward = torch.einsum("bji,brj->bri", link, state.read_weights)  # L^T w
        read_content = content_weights(memory, read_keys, read_strengths)
        read_weights = modes[..., 0:1] * backward + modes[..., 1:2] * read_content + modes[..., 2:3] * forward
        read_vectors = torch.einsum("brn,bnw->brw", read_weights, memory)

        y = self.output(torch.cat([h, read_vectors.reshape(B, -1)], dim=-1))
        if self.clip_value is not None:
            y = y.clamp(-self.clip_value, self.clip_value)
        return y, DNCState((h, c), memory, usage, link, precedence, read_weights, write_weights, read_vectors)

    def forward(self, x: Tensor, state: Optional[DNCState] = None) -> Tensor:
        if x.dim() != 3:
            raise ValueError(f"DNC expects input of shape [batch, time, features], got {tuple(x.shape)}")
        state = state or self.initial_state(x.shape[0], x.device, x.dtype)
        outputs = []
        for t in range(x.shape[1]):
            y, state = self.step(x[:, t], state)
            outputs.append(y)
        return torch.stack(outputs, dim=1)
