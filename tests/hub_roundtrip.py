"""Run in a subprocess by test_hub.py, with HF_ENDPOINT pointing at the local test Hub (it must be set before
transformers and huggingface_hub are imported). Pushes pruned models and reloads them from the Hub."""

import json
import sys
import tempfile
from pathlib import Path

import datasets
import torch
import transformers as tf

import hf_prune
from hf_prune import AutoPrunedModel, MagnitudeConfig, PruningArguments, PruningTrainer


sys.path.insert(0, str(Path(__file__).parent))
from tiny_models import FAMILIES, build, inputs, logits


def tokenizer(folder: Path) -> tf.PreTrainedTokenizerBase:
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(94)]
    (folder / "vocab.txt").write_text("\n".join(vocab))
    # transformers 5 takes `vocab=`; a `vocab_file=` keyword is ignored and leaves a 5-token vocabulary (all [UNK])
    tok = tf.BertTokenizerFast(vocab=str(folder / "vocab.txt"))
    assert len(tok) == len(vocab) and tok.convert_tokens_to_ids("w7") == vocab.index("w7"), len(tok)
    return tok


def main() -> None:
    report = {}
    work = Path(tempfile.mkdtemp())
    bert, llama = FAMILIES[0], next(f for f in FAMILIES if f.name == "llama")

    # 1. a per-layer BERT through model.push_to_hub, reloaded with remote code and with AutoPrunedModel
    model = build(bert)
    hf_prune.prune_structures(model, heads={1: [0, 3]}, neurons={0: list(range(10))})
    expected = logits(model, inputs(bert))
    model.push_to_hub("tester/bert-pruned")
    remote = tf.AutoModelForSequenceClassification.from_pretrained("tester/bert-pruned", trust_remote_code=True)
    auto = AutoPrunedModel.from_pretrained("tester/bert-pruned")
    report["bert_remote_code"] = (logits(remote.eval(), inputs(bert)) - expected).abs().max().item()
    report["bert_auto"] = (logits(auto, inputs(bert)) - expected).abs().max().item()

    # 2. a uniform Llama through model.push_to_hub, reloaded with plain from_pretrained
    model = build(llama)
    hf_prune.prune_structures(model, heads={0: [2, 3], 1: [0, 1]}, neurons={0: [0, 1], 1: [5, 6]})
    expected = logits(model, inputs(llama))
    model.push_to_hub("tester/llama-pruned")
    stock = tf.AutoModelForCausalLM.from_pretrained("tester/llama-pruned")
    report["llama_stock_class"] = type(stock).__name__
    report["llama_stock"] = (logits(stock.eval(), inputs(llama)) - expected).abs().max().item()

    # 3. Trainer.push_to_hub after a short pruning run, with the tokenizer and the generated card
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 99, (32, 8), generator=g)
    train = datasets.Dataset.from_dict({"input_ids": ids.tolist(), "labels": (ids[:, 0] > 50).long().tolist()})
    args = PruningArguments(
        output_dir=str(work / "run"),
        max_steps=3,
        per_device_train_batch_size=8,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        push_to_hub=True,
        hub_model_id="tester/trained-pruned",
    )
    trainer = PruningTrainer(
        model=build(bert),
        args=args,
        pruning_config=MagnitudeConfig(target_sparsity=0.4),
        train_dataset=train,
        eval_dataset=train,
        processing_class=tokenizer(work),
    )
    trainer.train()
    pruned = trainer.finalize().eval()
    expected = logits(pruned, inputs(bert))
    trainer.push_to_hub()
    auto = AutoPrunedModel.from_pretrained("tester/trained-pruned")
    report["trainer_auto"] = (logits(auto, inputs(bert)) - expected).abs().max().item()
    reloaded_tokenizer = tf.AutoTokenizer.from_pretrained("tester/trained-pruned")
    report["trainer_tokenizer"] = type(reloaded_tokenizer).__name__
    report["trainer_tokenizer_ids"] = reloaded_tokenizer("w3 w50 w93", add_special_tokens=False)["input_ids"]
    print("REPORT " + json.dumps(report))


if __name__ == "__main__":
    main()
