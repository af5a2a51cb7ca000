"""BiLSTM sentiment classification on IMDB (Maas et al., 2011; user-provided data).

A text classifier standing in for ALI-G's SNLI experiment (InferSent's max-pooled
BiLSTM), on a data set a user can download: aclImdb_v1.tar.gz from
https://ai.stanford.edu/~amaas/data/sentiment/, unpacked under the data root
(``data_dir`` / --data-dir, else $POLYAK_DATA_DIR or the cache). Text: lower-cased, "<br />" removed, words and punctuation marks as
tokens; the 20,000 most frequent training tokens (after the validation
hold-out) form the vocabulary (0 = padding, 1 = unknown); texts are cut to
their first 256 tokens. Budget: no paper trains this exact task; the paper size
uses InferSent's train_nli.py defaults (batch 64, up to 20 epochs), the code
ALI-G's SNLI runs used.
"""
from __future__ import annotations

import re
from collections import Counter
from typing import Dict, List, Sequence

import numpy as np
import torch

from ..models import BiLSTMClassifier
from . import _common as C
from .base import Budget, Workload, WorkloadInstance, register_workload

VOCABULARY_SIZE = 20000
MAX_TOKENS = 256
PAD, UNKNOWN = 0, 1
_TOKEN = re.compile(r"[a-z0-9']+|[^\sa-z0-9']")

BUDGETS = {
    # At least 5 epochs everywhere: ALI-G+ then runs the paper's K = 5 sections (K="auto").
    "quick": Budget(epochs=5, batch_size=64, train_subset=300, test_subset=500),
    "lite": Budget(epochs=5, batch_size=64, train_subset=3000, test_subset=2000),
    "paper": Budget(epochs=20, batch_size=64),
}


def tokenize(text: str) -> List[str]:
    return _TOKEN.findall(text.lower().replace("<br />", " "))


def build_vocabulary(token_lists: Sequence[List[str]], size: int = VOCABULARY_SIZE) -> Dict[str, int]:
    counts = Counter(token for tokens in token_lists for token in tokens)
    # Ties broken alphabetically so the vocabulary does not depend on file order.
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[: size - 2]
    return {token: index + 2 for index, (token, _) in enumerate(ranked)}


def encode(token_lists: Sequence[List[str]], vocabulary: Dict[str, int], max_tokens: int = MAX_TOKENS) -> torch.Tensor:
    out = np.full((len(token_lists), max_tokens), PAD, dtype=np.int64)
    for row, tokens in enumerate(token_lists):
        ids = [vocabulary.get(token, UNKNOWN) for token in tokens[:max_tokens]]
        out[row, : len(ids)] = ids
    return torch.from_numpy(out)


def build(size: str, seed: int, data_dir=None) -> WorkloadInstance:
    from polyak.bench import datasets

    budget = BUDGETS[size]
    splits = C.load_user_data("imdb-bilstm", datasets.load_imdb, data_dir)
    train_texts, train_labels = splits["train"]
    test_texts, test_labels = splits["test"]
    train_labels = np.asarray(train_labels, dtype=np.int64)
    train_pos, val_pos = C.holdout_split(len(train_texts))
    train_pos = C.take_subset(train_pos, budget.train_subset)
    test_pos = C.take_subset(np.arange(len(test_texts)), budget.test_subset)
    val_pos = C.take_subset(val_pos, budget.test_subset)

    train_tokens = [tokenize(train_texts[i]) for i in train_pos]
    vocabulary = build_vocabulary(train_tokens)
    make = lambda tokens, labels: C.ArrayDataset(encode(tokens, vocabulary), torch.from_numpy(labels))  # noqa: E731
    with C.seeded(seed):
        model = BiLSTMClassifier(VOCABULARY_SIZE, num_classes=2, padding_idx=PAD)
    return WorkloadInstance(
        model=model,
        train=make(train_tokens, train_labels[train_pos]),
        val=make([tokenize(train_texts[i]) for i in val_pos], train_labels[val_pos]),
        test=make([tokenize(test_texts[i]) for i in test_pos], np.asarray(test_labels, dtype=np.int64)[test_pos]),
        per_sample_loss=C.cross_entropy_per_sample,
        evaluate=C.classifier_evaluate(),
        budget=budget,
    )


register_workload(
    Workload(
        name="imdb-bilstm",
        metric="accuracy",
        lower_bound=0.0,
        interpolating=True,
        data="imdb",
        budgets=BUDGETS,
        build=build,
        summary="max-pooled BiLSTM sentiment classifier on IMDB (user-provided data)",
        tags=("text", "recurrent", "user-data"),
    )
)
