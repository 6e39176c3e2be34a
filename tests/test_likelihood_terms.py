"""The size of a training set in likelihood terms (examples, or label tokens for a causal LM), and BMRS's KL weighted
by it: the free energy per term is the task loss plus KL / N with N counting what the loss averages over."""

from __future__ import annotations

import datasets
import pytest
import torch
from tokenizers import Tokenizer, models
from transformers import DataCollatorForLanguageModeling, DataCollatorWithPadding, PreTrainedTokenizerFast

from hf_prune import prepare_model_for_pruning
from hf_prune.likelihood_terms import count_likelihood_terms
from hf_prune.mapping import get_pruning_state, is_prepared
from hf_prune.methods.bmrs import BmrsConfig

from .tiny_models import FAMILY, build, trainer_for


def tokenizer() -> PreTrainedTokenizerFast:
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{f"t{i}": i for i in range(3, 99)}}
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<pad>")), pad_token="<pad>", eos_token="</s>"
    )


def ragged_documents(size: int, seed: int = 0) -> datasets.Dataset:
    """Token sequences of 3 to 12 tokens (padded by the collator)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, 13, (size,), generator=g).tolist()
    return datasets.Dataset.from_dict(
        {"input_ids": [torch.randint(3, 99, (n,), generator=g).tolist() for n in lengths]}
    )


def test_causal_lm_counts_predicted_tokens_not_sequences_or_padding():
    documents = ragged_documents(40)
    collator = DataCollatorForLanguageModeling(tokenizer(), mlm=False)
    predicted = sum(len(ids) - 1 for ids in documents["input_ids"])  # every token after the first of a sequence
    assert count_likelihood_terms(documents, collator, shifts_labels=True) == predicted
    assert count_likelihood_terms(documents, collator, shifts_labels=False) == predicted + 40


def test_sequence_labels_count_examples():
    data = ragged_documents(30).add_column("labels", [i % 2 for i in range(30)])
    assert count_likelihood_terms(data, DataCollatorWithPadding(tokenizer()), shifts_labels=False) == 30


def test_large_sets_are_estimated_from_a_fixed_sample():
    documents = ragged_documents(3000, seed=1)
    collator = DataCollatorForLanguageModeling(tokenizer(), mlm=False)
    exact = sum(len(ids) - 1 for ids in documents["input_ids"])
    estimate = count_likelihood_terms(documents, collator, shifts_labels=True, sample_size=500)
    assert estimate != exact and abs(estimate / exact - 1) < 0.05  # a sample, close to the exact count
    assert estimate == count_likelihood_terms(documents, collator, shifts_labels=True, sample_size=500)  # resumable


def test_unsized_datasets_have_no_count():
    stream = datasets.Dataset.from_dict({"input_ids": [[3, 4, 5]]}).to_iterable_dataset()
    assert count_likelihood_terms(stream, DataCollatorForLanguageModeling(tokenizer(), mlm=False), True) is None


def test_bmrs_kl_of_a_causal_lm_is_divided_by_its_training_tokens(tmp_path):
    """The trainer's N equals the Trainer's own token count (`num_items_in_batch`) summed over one epoch, and the
    KL term added to the loss is sum(KL) / (N + pretrained_evidence)."""
    documents = ragged_documents(48)
    collator = DataCollatorForLanguageModeling(tokenizer(), mlm=False)
    model = build(FAMILY["llama"])
    config = BmrsConfig(pretrained_evidence=7)
    trainer = trainer_for(model, config, tmp_path, train_dataset=documents, data_collator=collator)
    terms = trainer._num_likelihood_terms()

    batches = list(trainer.get_train_dataloader())
    epoch_tokens = sum(int(trainer._get_num_items_in_batch([batch], "cpu")) for batch in batches)
    assert terms == epoch_tokens == sum(len(ids) - 1 for ids in documents["input_ids"])
    assert terms > 5 * len(documents)  # per sequence, the KL would weigh 5-11x more here, 100-1000x on real text

    method = get_pruning_state(trainer.pruned_model).method
    gates = method._gates()
    with torch.no_grad():
        for gate in gates:
            gate.mu.uniform_(-3, 0)  # move the gates off the prior's initial point so the KL is not tiny
    kl = sum(float(g.kl().detach().sum()) for g in gates)
    assert float(method.loss(terms)) == pytest.approx(kl / (terms + 7), rel=1e-5)


def test_bmrs_kl_of_a_classifier_is_divided_by_its_examples(tmp_path):
    data = ragged_documents(24).add_column("labels", [i % 2 for i in range(24)])
    trainer = trainer_for(
        build(FAMILY["bert"]),
        BmrsConfig(),
        tmp_path,
        train_dataset=data,
        data_collator=DataCollatorWithPadding(tokenizer()),
    )
    assert trainer._num_likelihood_terms() == 24


def test_elementwise_noise_is_refused_for_causal_lms_before_any_gate_is_installed():
    model = build(FAMILY["llama"])
    with pytest.raises(ValueError, match="noise='example'"):
        prepare_model_for_pruning(model, BmrsConfig(noise="element"))
    assert not is_prepared(model)
    assert is_prepared(prepare_model_for_pruning(build(FAMILY["bert"]), BmrsConfig(noise="element")))
