"""Recurrent models: a character-level LSTM language model and a BiLSTM text classifier."""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence


class CharLSTM(nn.Module):
    """Embedding -> multi-layer LSTM -> linear over the vocabulary, at every position.

    DeepOBS's Tolstoi Char-RNN: 2 LSTM layers of 128 units, embedding of 128,
    dropout 0.2 (keep probability 0.8) on the LSTM's input and output.
    Input [batch, time] of symbol ids; output [batch, time, vocab_size] logits.
    """

    def __init__(self, vocab_size: int, hidden_size: int = 128, num_layers: int = 2, embedding_dim: int = 128, dropout: float = 0.2):
        super().__init__()
        if vocab_size < 2:
            raise ValueError(f"vocab_size must be at least 2, got {vocab_size}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.embedding = nn.Embedding(vocab_size, embedding_dim)
        self.input_dropout = nn.Dropout(dropout)
        self.lstm = nn.LSTM(embedding_dim, hidden_size, num_layers=num_layers, batch_first=True, dropout=dropout if num_layers > 1 else 0.0)
        self.output_dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden_size, vocab_size)

    def forward(self, tokens: Tensor) -> Tensor:
        hidden, _ = self.lstm(self.input_dropout(self.embedding(tokens)))
        return self.head(self.output_dropout(hidden))


class BiLSTMClassifier(nn.Module):
    """Embedding -> bidirectional LSTM -> max-pool over valid positions -> linear.

    The max-pooled BiLSTM encoder is InferSent's (Conneau et al., 2017), the
    model of ALI-G's SNLI experiment. Input [batch, time] token ids with
    ``padding_idx`` after the end of each text; output [batch, num_classes].
    """

    def __init__(
        self,
        vocab_size: int,
        num_classes: int = 2,
        embedding_dim: int = 128,
        hidden_size: int = 128,
        padding_idx: int = 0,
        dropout: float = 0.0,
    ):
        super().__init__()
        if vocab_size < 2 or num_classes < 2:
            raise ValueError(f"vocab_size ({vocab_size}) and num_classes ({num_classes}) must be at least 2")
        self.padding_idx = padding_idx
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=padding_idx)
        self.lstm = nn.LSTM(embedding_dim, hidden_size, batch_first=True, bidirectional=True)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(2 * hidden_size, num_classes)

    def forward(self, tokens: Tensor) -> Tensor:
        valid = tokens != self.padding_idx
        # An all-padding text still gets one step so packing never sees length 0.
        lengths = valid.sum(dim=1).clamp(min=1)
        packed = pack_padded_sequence(self.embedding(tokens), lengths.cpu(), batch_first=True, enforce_sorted=False)
        hidden, _ = self.lstm(packed)
        hidden, _ = pad_packed_sequence(hidden, batch_first=True, total_length=tokens.shape[1])
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        mask = positions[None, :] < lengths[:, None]
        pooled = hidden.masked_fill(~mask[:, :, None], float("-inf")).max(dim=1).values
        return self.head(self.dropout(pooled))
