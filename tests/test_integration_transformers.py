"""HF Trainer: PolyakTrainer (the one line a user changes) trains a small model built
from a config exactly as the plain PyTorch loop does."""
import copy

import pytest
import torch

import polyak

transformers = pytest.importorskip("transformers", reason="transformers is a test extra: pip install -e '.[test]'")

from polyak.integrations.transformers import PolyakTrainer, per_example_cross_entropy  # noqa: E402

from integration_helpers import max_difference  # noqa: E402

SAMPLES, LENGTH, BATCH, WINDOW = 32, 8, 4, 2


def tiny_bert():
    config = transformers.BertConfig(
        vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=LENGTH, num_labels=3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    torch.manual_seed(0)
    return transformers.BertForSequenceClassification(config)


def tiny_gpt2():
    config = transformers.GPT2Config(vocab_size=40, n_positions=LENGTH, n_embd=16, n_layer=1, n_head=2,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(config)


def language_examples():
    return [{"input_ids": e["input_ids"], "attention_mask": e["attention_mask"], "labels": e["input_ids"],
             "index": e["index"]} for e in examples()]


def examples():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 40, (SAMPLES, LENGTH), generator=g)
    labels = torch.randint(0, 3, (SAMPLES,), generator=g)
    return [{"input_ids": ids[i], "attention_mask": torch.ones(LENGTH, dtype=torch.long), "labels": labels[i],
             "index": torch.tensor(i)} for i in range(SAMPLES)]


def arguments(tmp_path, **kwargs):
    options = dict(output_dir=str(tmp_path), per_device_train_batch_size=BATCH, gradient_accumulation_steps=WINDOW,
                   num_train_epochs=1, train_sampling_strategy="sequential", report_to=[], save_strategy="no",
                   logging_strategy="no", use_cpu=True, disable_tqdm=True, seed=0, remove_unused_columns=False)
    options.update(kwargs)
    return transformers.TrainingArguments(**options)


def plain_loop(model, optimizer, per_sample, max_grad_norm, steps, data, token_sum=True):
    """The plain loop of the Trainer's loss, through the README's step(loss=) rather than
    the hand-over. A language model (it takes num_items_in_batch, ``token_sum``) sums
    token losses over the window and divides by the window's label count; otherwise each
    micro-batch mean (ALI-G+: of the per-sample losses) is backpropagated divided by
    WINDOW and the window's loss is their mean. Per window: the Trainer's clip, a step,
    its default (linear, no warm-up) schedule."""
    scheduler = transformers.get_linear_schedule_with_warmup(optimizer, 0, steps)
    loader = torch.utils.data.DataLoader(data, batch_size=BATCH, collate_fn=transformers.default_data_collator)
    micro_batches = list(loader)
    model.train()
    for start in range(0, len(micro_batches), WINDOW):
        window = micro_batches[start:start + WINDOW]
        count = sum(int(batch["labels"].ne(-100).sum()) for batch in window)
        window_loss, losses, indices = 0.0, [], []
        for batch in window:
            indices.append(batch.pop("index"))
            if per_sample:
                labels = batch.pop("labels")
                losses.append(per_example_cross_entropy(model(**batch), labels))
                (losses[-1].mean() / WINDOW).backward()
            elif token_sum:
                loss = model(**batch, num_items_in_batch=torch.tensor(count)).loss
                loss.backward()
                window_loss = window_loss + loss.detach()
            else:
                loss = model(**batch).loss
                (loss / WINDOW).backward()
                window_loss = window_loss + loss.detach() / WINDOW
        if max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        if per_sample:
            optimizer.step(loss=torch.cat(losses).detach(), index=torch.cat(indices))
        else:
            optimizer.step(loss=window_loss)
        scheduler.step()
        model.zero_grad()


CASES = {
    # a causal LM that takes num_items_in_batch; default TrainingArguments (max_grad_norm=1.0,
    # linear schedule, weight_decay=0)
    "alig": (tiny_gpt2, language_examples, polyak.ALIG, {"max_lr": 1.0, "momentum": 0.9}, {}),
    # a classifier (BERT's ignores num_items_in_batch: ALI-G+ computes its own per-sample losses)
    "alig-plus": (tiny_bert, examples, polyak.ALIGPlus, {"max_lr": 1.0, "num_samples": SAMPLES, "epochs": 1, "K": 1},
                  {"max_grad_norm": 0.0, "weight_decay": 0.01}),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_polyak_trainer_equals_plain_loop(name, tmp_path):
    build, data, cls, kwargs, args = CASES[name]
    model = build()
    reference = copy.deepcopy(model)
    trainer = PolyakTrainer(model=model, args=arguments(tmp_path, **args), train_dataset=data(),
                            optimizer_cls_and_kwargs=(cls, kwargs))
    trainer.train()
    steps = SAMPLES // BATCH // WINDOW
    assert trainer.state.global_step == steps
    per_sample = name == "alig-plus"
    if per_sample:
        decayed = {n for n in trainer.get_decay_parameter_names(reference)}
        groups = [{"params": [p for n, p in reference.named_parameters() if n in decayed], "weight_decay": 0.01},
                  {"params": [p for n, p in reference.named_parameters() if n not in decayed], "weight_decay": 0.0}]
    else:
        groups = reference.parameters()
    optimizer = cls(groups, **kwargs)
    plain_loop(reference, optimizer, per_sample, trainer.args.max_grad_norm, steps, data())
    assert max_difference(trainer.model, reference) < 1e-6
    assert trainer.optimizer.param_groups[0]["step_size"] > 0  # it moved


def test_a_model_that_ignores_num_items_in_batch_with_hf_switch(tmp_path):
    """BertForSequenceClassification takes **kwargs but ignores num_items_in_batch, so the
    Trainer would backpropagate the SUM of the micro-batch means; HF's own switch
    (model_accepts_loss_kwargs = False, documented) restores the mean, and the step follows."""
    model = tiny_bert()
    reference = copy.deepcopy(model)
    kwargs = {"max_lr": 1.0, "momentum": 0.9}
    trainer = PolyakTrainer(model=model, args=arguments(tmp_path), train_dataset=examples(),
                            optimizer_cls_and_kwargs=(polyak.ALIG, kwargs))
    trainer.model_accepts_loss_kwargs = False
    trainer.train()
    optimizer = polyak.ALIG(reference.parameters(), **kwargs)
    plain_loop(reference, optimizer, False, trainer.args.max_grad_norm, SAMPLES // BATCH // WINDOW, examples(),
               token_sum=False)
    assert max_difference(trainer.model, reference) < 1e-6


def test_weight_decay_refused_where_the_optimizer_has_none(tmp_path):
    trainer = PolyakTrainer(model=tiny_bert(), args=arguments(tmp_path, weight_decay=0.01), train_dataset=examples(),
                            optimizer_cls_and_kwargs=(polyak.DFW, {"eta": 0.1}))
    with pytest.raises(ValueError, match="weight_decay=0.01"):
        trainer.train()
