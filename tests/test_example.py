"""Tests of the fine-tune-and-prune script (`hf_prune/scripts/fine_tune_and_prune.py`, run through
`examples/fine_tune_and_prune.py`), its shared parser and its data helpers: `main` in-process on tiny local data with
a tiny BERT.

The tiny model and its tokenizer are built offline from a config and a hand-written vocabulary. Each end-to-end run
takes a few seconds; the real default (pretrained MiniLM, embedded data) is the `slow` test.
"""

from __future__ import annotations

import csv
import dataclasses
import fnmatch
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from transformers import (
    AutoModelForSequenceClassification,
    BertConfig,
    BertForSequenceClassification,
    BertTokenizerFast,
)

import hf_prune
from hf_prune import AutoPrunedModel, PruningTrainer
from hf_prune.mapping import is_prepared
from hf_prune.scripts import fine_tune_and_prune

from .tiny_models import load_example, needs_embedded_data, needs_embedded_model


ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "fine_tune_and_prune.py"

POSITIVE = ["good", "great", "happy", "love", "nice", "fun", "best", "win"]
NEGATIVE = ["bad", "awful", "sad", "hate", "ugly", "boring", "worst", "lose"]
NEUTRAL = ["car", "road", "city", "day", "drive", "news", "today", "phone"]
FILLER = ["the", "a", "is", "was", "so", "very", "my", "this"]
MARKER = "zebra"  # appears only in the rows of the test split
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *POSITIVE, *NEGATIVE, *NEUTRAL, *FILLER, MARKER]


script = load_example("fine_tune_and_prune")


def run(argv: list[str]) -> dict:
    """What `python examples/fine_tune_and_prune.py ARGV` does, in-process."""
    return script.main(*script.make_parser().parse_args_and_config(argv))


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A random 2-layer BERT with a 3-label head and a matching word-level tokenizer, saved to a folder."""
    path = tmp_path_factory.mktemp("tiny-bert")
    vocab_file = path / "vocab.txt"
    vocab_file.write_text("\n".join(VOCAB) + "\n")
    # transformers 5 takes `vocab=` (a path or a dict); a `vocab_file=` keyword is silently ignored (all [UNK])
    tokenizer = BertTokenizerFast(vocab=str(vocab_file), model_max_length=64)
    assert len(tokenizer) == len(VOCAB)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=96,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=64,
        num_labels=3,
    )
    BertForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _rows(n: int, seed: int, marker: bool = False) -> list[tuple[str, str]]:
    """`n` (text, label) rows of three classes; test rows carry the marker word."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        label, words = [("pos", POSITIVE), ("neg", NEGATIVE), ("neutral", NEUTRAL)][i % 3]
        picks = [words[int(j)] for j in torch.randint(len(words), (2,), generator=g)]
        picks += [FILLER[int(j)] for j in torch.randint(len(FILLER), (3,), generator=g)]
        if marker:
            picks.append(MARKER)
        rows.append((" ".join(picks), label))
    return rows


def _write_csv(path: Path, rows: list[tuple[str, str]]) -> str:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    return str(path)


class _Spy:
    """Records which data each `PruningTrainer.train`/`evaluate`/`predict` call saw, and whether the model was still
    gated at that moment."""

    def __init__(self, monkeypatch, marker_id: int):
        self.calls: list[tuple[str, str | None, bool, bool]] = []
        self.trainer = None
        spy = self

        def has_marker(dataset) -> bool:
            return dataset is not None and any(marker_id in ids for ids in dataset["input_ids"])

        original_train, original_evaluate, original_predict = (
            PruningTrainer.train,
            PruningTrainer.evaluate,
            PruningTrainer.predict,
        )

        def train(self, *args, **kwargs):
            spy.trainer = self
            spy.calls.append(("train", None, has_marker(self.train_dataset) or has_marker(self.eval_dataset), True))
            return original_train(self, *args, **kwargs)

        def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
            dataset = self.eval_dataset if eval_dataset is None else eval_dataset
            spy.calls.append(("evaluate", metric_key_prefix, has_marker(dataset), is_prepared(self.pruned_model)))
            return original_evaluate(self, eval_dataset, ignore_keys, metric_key_prefix)

        def predict(self, test_dataset, *args, **kwargs):
            spy.calls.append(("predict", None, has_marker(test_dataset), is_prepared(self.pruned_model)))
            return original_predict(self, test_dataset, *args, **kwargs)

        monkeypatch.setattr(PruningTrainer, "train", train)
        monkeypatch.setattr(PruningTrainer, "evaluate", evaluate)
        monkeypatch.setattr(PruningTrainer, "predict", predict)


FAST = [
    "--max_steps",
    "4",
    "--per_device_train_batch_size",
    "8",
    "--per_device_eval_batch_size",
    "16",
    "--logging_steps",
    "1",
    "--max_seq_length",
    "16",
    "--latency_repeats",
    "2",
    "--latency_batch_size",
    "4",
    "--latency_warmup",
    "1",
    "--disable_tqdm",
    "true",
]


def _check_outputs(output_dir: Path, results: dict, trainer, tokenizer_dir: Path) -> None:
    on_disk = json.loads((output_dir / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(results))
    for key in (
        "validation_before",
        "validation_after",
        "sparsity",
        "parameters",
        "latency",
        "kept",
        "labels",
        "pruning_config",
        "num_examples",
        "train",
    ):
        assert key in on_disk, key
    for split in ("validation_before", "validation_after"):
        assert {"accuracy", "macro_f1", "loss"} <= set(on_disk[split])
    assert on_disk["parameters"]["after"] < on_disk["parameters"]["before"]
    assert 0 < on_disk["sparsity"] < 1
    assert on_disk["latency"]["dense_ms"] > 0 and on_disk["latency"]["pruned_ms"] > 0
    for png in ("pruning_history.png", "kept_units.png"):
        assert (output_dir / png).stat().st_size > 1000, png

    pruned_dir = output_dir / "pruned"
    for name in ("config.json", "model.safetensors", "pruning_config.json", "tokenizer.json", "README.md"):
        assert (pruned_dir / name).exists(), name
    card = (pruned_dir / "README.md").read_text()
    assert "macro_f1" in card and "latency" in card
    pruning = json.loads((pruned_dir / "pruning_config.json").read_text())
    assert pruning["result"]["after"]["parameters"] == on_disk["parameters"]["after"]

    # the saved folder reloads with the same logits as the in-memory pruned model
    tokenizer = BertTokenizerFast.from_pretrained(pruned_dir)
    batch = tokenizer(["good day today", "the worst road", "a fun car zebra"], padding=True, return_tensors="pt")
    in_memory = trainer.model.eval()
    reloaded = AutoPrunedModel.from_pretrained(pruned_dir).eval()
    with torch.no_grad():
        expected = in_memory(**batch).logits
        torch.testing.assert_close(reloaded(**batch).logits, expected, rtol=0, atol=1e-6)
        if pruning["result"]["export"] == "remote_code":  # and without hf_prune, through the saved modeling file
            plain = AutoModelForSequenceClassification.from_pretrained(pruned_dir, trust_remote_code=True).eval()
            torch.testing.assert_close(plain(**batch).logits, expected, rtol=0, atol=1e-6)
    assert reloaded.config.id2label == dict(enumerate(on_disk["labels"]))


def test_csv_string_labels_three_classes(tmp_path, tiny_model, monkeypatch):
    train = _write_csv(tmp_path / "train.csv", _rows(48, seed=1))
    validation = _write_csv(tmp_path / "validation.csv", _rows(15, seed=2))
    test = _write_csv(tmp_path / "test.csv", _rows(12, seed=3, marker=True))
    output_dir = tmp_path / "out"
    spy = _Spy(monkeypatch, marker_id=VOCAB.index(MARKER))

    results = run(
        [
            "--model_name_or_path",
            str(tiny_model),
            "--train_file",
            train,
            "--validation_file",
            validation,
            "--test_file",
            test,
            "--output_dir",
            str(output_dir),
            *FAST,
        ]
    )

    assert results["labels"] == ["neg", "neutral", "pos"]
    assert results["num_examples"] == {"train": 48, "validation": 15, "test": 12}
    defaults = fine_tune_and_prune.DEFAULTS
    assert results["method"] == defaults["method"]
    assert results["pruning_config"]["target_sparsity"] == defaults["target_sparsity"]
    assert results["pruning_config"]["method_seed"] == 42  # the method's seed follows --seed when not given
    assert (
        results["train"]["samples_per_second"] > 0
        and results["train"]["loss"] > 0
        and results["test_after"]["accuracy"] >= 0
    )
    # the dense reference: a plain Trainer with the same budget, evaluated on validation and test
    assert {"accuracy", "macro_f1", "loss"} <= set(results["test_dense"]) and "accuracy" in results["validation_dense"]
    assert not (output_dir / "dense_reference").exists() or not any((output_dir / "dense_reference").iterdir())
    _check_outputs(output_dir, results, spy.trainer, tiny_model)
    # the Trainer's own result files, beside metrics.json
    saved = json.loads((output_dir / "all_results.json").read_text())
    assert saved["test_accuracy"] == results["test_after"]["accuracy"]
    assert saved["eval_macro_f1"] == results["validation_after"]["macro_f1"]
    assert saved["train_loss"] == results["train"]["loss"]
    assert (
        json.loads((output_dir / "eval_results.json").read_text())["eval_loss"] == results["validation_after"]["loss"]
    )

    # the test rows reach the trainer once: the final report of the pruned (no longer gated) model
    assert [c for c in spy.calls if c[2]] == [("evaluate", "test", True, False)]
    assert spy.calls[0] == ("train", None, False, True)

    # a second run into the same, now non-empty, folder is refused unless asked for
    arguments = [
        "--model_name_or_path",
        str(tiny_model),
        "--train_file",
        train,
        "--output_dir",
        str(output_dir),
        *FAST,
    ]
    before = sorted(p.name for p in output_dir.iterdir())
    with pytest.raises(ValueError, match="--overwrite_output_dir"):
        run(arguments)
    assert sorted(p.name for p in output_dir.iterdir()) == before
    assert ("evaluate", "eval", False, True) in spy.calls  # the gated model on validation
    assert spy.calls[-1] == ("evaluate", "test", True, False)


def test_json_int_labels_from_yaml_config_with_push(tmp_path, tiny_model, monkeypatch):
    """JSON data with integer labels 1/2, no validation file (held out, stratified), arguments from a YAML file,
    another method with its own fields, a head whose size differs from the data's, and a captured Hub push."""
    rows = [
        {"sentence": text, "target": 1 if label == "pos" else 2}
        for text, label in _rows(60, seed=4)
        if label != "neutral"
    ]
    train = tmp_path / "train.json"
    train.write_text(json.dumps(rows))  # a JSON list (JSON lines work too)
    output_dir = tmp_path / "out"
    fast = dict(zip(FAST[::2], FAST[1::2]))
    args = {k.lstrip("-"): yaml.safe_load(v) for k, v in fast.items()}
    args.update(
        model_name_or_path=str(tiny_model),
        train_file=str(train),
        text_column="sentence",
        label_column="target",
        output_dir=str(output_dir),
        ignore_mismatched_sizes=True,
        method="random",
        target_sparsity=0.5,
        prune_heads=False,
        method_seed=7,
        seed=3,
        push_to_hub=True,
        hub_model_id="tester/tiny-pruned",
        compare_dense=False,
    )
    config_file = tmp_path / "args.yaml"
    config_file.write_text(yaml.safe_dump(args))

    commits = []
    from huggingface_hub import CommitInfo, HfApi, RepoUrl

    def create_repo(self, repo_id, **kwargs):
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, *, repo_id, folder_path, commit_message=None, ignore_patterns=(), **kwargs):
        """What would be uploaded: the folder's files, less the ignored ones."""
        files = [p.relative_to(folder_path).as_posix() for p in Path(folder_path).rglob("*") if p.is_file()]
        files = [f for f in files if not any(fnmatch.fnmatch(f, pattern) for pattern in ignore_patterns or ())]
        commits.append((repo_id, sorted(files), commit_message))
        url = f"https://huggingface.co/{repo_id}/commit/{'0' * 40}"
        return CommitInfo(commit_url=url, commit_message=commit_message or "", commit_description="", oid="0" * 40)

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    spy = _Spy(monkeypatch, marker_id=VOCAB.index(MARKER))

    results = run([str(config_file)])

    assert results["labels"] == ["1", "2"]
    assert results["num_examples"] == {"train": 36, "validation": 4}  # 10 % held out, no test split
    assert results["test_after"] is None and "test_dense" not in results
    assert results["pruning_config"] == {
        **results["pruning_config"],
        "method": "random",
        "target_sparsity": 0.5,
        "prune_heads": False,
        "method_seed": 7,
    }
    assert results["kept"]["heads"]["after"] == results["kept"]["heads"]["before"]
    _check_outputs(output_dir, results, spy.trainer, tiny_model)

    # one commit, by trainer.push_to_hub, of the pruned folder only: model, tokenizer and hf_prune's card
    assert [(repo, message) for repo, _, message in commits] == [
        ("tester/tiny-pruned", "Pruned with hf_prune (random)")
    ]
    files = commits[0][1]
    for name in (
        "config.json",
        "model.safetensors",
        "pruning_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "README.md",
    ):
        assert name in files, name
    assert not {"metrics.json", "all_results.json", "pruning_history.png"} & set(files)
    assert not any(f.startswith(("pruned/", "dense_reference/")) for f in files)
    assert "tester/tiny-pruned" in (output_dir / "pruned" / "README.md").read_text()  # the card knows its repo


def test_method_flags_from_registry(tmp_path):
    """`--method` offers every registered method, the chosen config's fields parse as flags next to the script's
    (one parser: `--seed` and `--method_seed` are two flags), and the script's DEFAULTS apply."""
    parser = fine_tune_and_prune.make_parser()
    out = ["--output_dir", str(tmp_path)]
    *_, training, config = parser.parse_args_and_config(
        [*out, "--method", "random", "--target_sparsity", "0.4", "--seed", "3", "--method_seed", "5"]
    )
    assert (type(config).__name__, config.target_sparsity, training.seed, config.method_seed) == (
        "RandomConfig",
        0.4,
        3,
        5,
    )
    model_args, data_args, training, config = parser.parse_args_and_config(out)
    defaults = fine_tune_and_prune.DEFAULTS
    assert (config.method, config.target_sparsity) == (defaults["method"], defaults["target_sparsity"])
    assert (training.num_train_epochs, training.learning_rate) == (
        defaults["num_train_epochs"],
        defaults["learning_rate"],
    )
    assert data_args.max_train_samples == 2000 and model_args.base_model_id == "sentence-transformers/all-MiniLM-L6-v2"
    assert type(parser.parse_args_and_config([*out, "--method", "bmrs"])[-1]) is hf_prune.BmrsConfig  # no target
    for method in hf_prune.available_methods():  # every method's flags fit beside the script's
        assert method in parser.make_parser(method).epilog
        assert parser.parse_args_and_config([*out, "--method", method])[-1].method == method

    with pytest.raises(ValueError, match="--target_sparsity"):  # an unknown flag: the error lists the method's flags
        parser.parse_args_and_config([*out, "--no_such_flag", "1"])
    with pytest.raises(ValueError, match="target_sparsity"):
        parser.parse_args_and_config([*out, "--target_sparsity", "1.5"])
    with pytest.raises(ValueError, match="--method 'nope'"):
        parser.parse_args_and_config([*out, "--method", "nope"])
    with pytest.raises(ValueError, match="--max_seq_length"):
        parser.parse_args_and_config([*out, "--max_seq_length", "0"])


def test_arguments_from_json_and_yaml_files(tmp_path):
    parser = fine_tune_and_prune.make_parser()
    (tmp_path / "args.json").write_text(json.dumps({"output_dir": "x", "method": "taylor", "num_train_epochs": 2}))
    *_, training, config = parser.parse_args_and_config([str(tmp_path / "args.json")])
    assert (type(config).__name__, config.target_sparsity, training.num_train_epochs) == ("TaylorConfig", 0.5, 2)
    assert (config.prune_start, training.per_device_train_batch_size) == (
        0.1,
        16,
    )  # the script DEFAULTS, not the classes
    (tmp_path / "args.yml").write_text("output_dir: x\nmethod: random\nmethod_seed: 4\nseed: 9\n")
    *_, training, config = parser.parse_args_and_config(["--config", str(tmp_path / "args.yml")])
    assert (config.method_seed, training.seed, training.num_train_epochs) == (4, 9, 1.0)
    (tmp_path / "bad.yaml").write_text("output_dir: x\nmethod: bmrs\ntarget_sparsity: 0.5\n")
    with pytest.raises(ValueError, match="target_sparsity"):  # not a BMRS field
        parser.parse_args_and_config([str(tmp_path / "bad.yaml")])


def test_no_config_field_shares_a_script_flags_name(tmp_path):
    from hf_prune.scripts.parser import _check_names

    """Every registered method's flags parse beside the script's own; a config that reuses a script flag's name
    (here `seed`) is refused with the field named, instead of silently losing one of the two."""
    parser = fine_tune_and_prune.make_parser()
    for method in hf_prune.available_methods():
        config_class = hf_prune.registry.get_method(method).config_class
        assert not {f.name for f in dataclasses.fields(config_class)} & parser.script_fields, method
    *_, training, config = parser.parse_args_and_config(
        ["--output_dir", str(tmp_path), "--method", "bmrs", "--warmup_steps", "3", "--decision_warmup_steps", "5"]
    )
    assert (training.warmup_steps, config.decision_warmup_steps) == (3, 5)

    @dataclasses.dataclass
    class ClashingConfig(hf_prune.TargetConfig):
        method = "clashing_test_method"
        seed: int = 0

    with pytest.raises(ValueError, match=r"ClashingConfig has fields named like the script's own flags \(seed\)"):
        _check_names(ClashingConfig, parser.script_fields)


def test_help_lists_method_options(capsys):
    with pytest.raises(SystemExit):
        fine_tune_and_prune.make_parser().parse_args_and_config(["--method", "random", "--help"])
    out = capsys.readouterr().out
    for flag in ("RandomConfig", "--target_sparsity", "--method_seed", "--max_train_samples", "--compare_dense"):
        assert flag in out, flag


@pytest.mark.slow
@needs_embedded_data
@needs_embedded_model
def test_default_run_real_model(tmp_path):
    """The main job exactly as a user runs it: no arguments, pretrained MiniLM, embedded data, offline."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    subprocess.run([sys.executable, str(SCRIPT)], cwd=tmp_path, env=env, check=True, timeout=1200)
    output_dir = tmp_path / "out" / "fine_tune_and_prune"
    results = json.loads((output_dir / "metrics.json").read_text())
    assert results["num_examples"] == {"train": 2000, "validation": 500, "test": 1000}
    # always predicting "negative" scores accuracy 0.70 and macro-F1 0.41 on these splits
    assert results["validation_before"]["accuracy"] > 0.78 and results["validation_before"]["macro_f1"] > 0.65
    assert results["test_after"]["macro_f1"] > 0.5
    assert 0.49 < results["sparsity"] < 0.51  # BINGO to half of the prunable parameters while it fine-tunes
    assert results["test_after"]["accuracy"] > results["test_dense"]["accuracy"] - 0.02  # the dense reference
    assert results["parameters"]["after"] < results["parameters"]["before"]
    for png in ("pruning_history.png", "kept_units.png"):
        assert (output_dir / png).exists()
    AutoPrunedModel.from_pretrained(output_dir / "pruned")


# -- hf_prune.scripts.data, the script's data helpers ---------------------------------------------------------------


def test_stratified_split_is_seeded_and_keeps_proportions():
    from datasets import Dataset

    from hf_prune.scripts.data import stratified_split, stratified_subsample

    data = Dataset.from_dict({"text": [str(i) for i in range(100)], "label": [0] * 70 + [1] * 27 + [2] * 3})
    first, again = stratified_split(data, 0.2, seed=5), stratified_split(data, 0.2, seed=5)
    assert first["test"]["text"] == again["test"]["text"]
    assert stratified_split(data, 0.2, seed=6)["test"]["text"] != first["test"]["text"]
    assert sorted(first["test"]["label"]) == [0] * 14 + [1] * 5 + [2]
    assert not set(first["train"]["text"]) & set(first["test"]["text"]) and len(first["train"]) == 80
    tiny = Dataset.from_dict({"label": [0, 0, 0, 1]})  # a single-row class stays in train
    assert 1 in stratified_split(tiny, 0.5, seed=0)["train"]["label"]
    assert len(stratified_subsample(data, 10, seed=0)) == 10 and stratified_subsample(data, None) is data


@needs_embedded_data
def test_embedded_sentiment_splits_share_no_text():
    """The corpus repeats some tweets (a few with both labels): each text is kept once, so no test tweet is trained on."""
    from hf_prune.scripts.data import load_sentiment_dataset

    splits = load_sentiment_dataset()
    texts = {name: split["text"] for name, split in splits.items()}
    assert all(len(set(t)) == len(t) for t in texts.values())
    assert not set(texts["train"]) & set(texts["test"]) and not set(texts["train"]) & set(texts["validation"])
    assert not set(texts["validation"]) & set(texts["test"])
    assert splits["train"].features["label"].names == ["negative", "positive"]


def test_local_files_and_label_encoding(tmp_path):
    from hf_prune.scripts.data import encode_labels, load_local_dataset

    (tmp_path / "train.tsv").write_bytes("text\tlabel\ncaf\xe9 ok\t5\nNA\t1\nfine\t3\n\t3\n".encode("latin-1"))
    (tmp_path / "test.jsonl").write_text('{"text": "x", "label": 5}\n{"text": "y", "label": 1}\n')
    raw = load_local_dataset({"train": tmp_path / "train.tsv", "test": tmp_path / "test.jsonl"})
    assert raw["train"]["text"][:2] == ["café ok", "NA"]  # latin-1 fallback; "NA" is text, not missing
    encoded = encode_labels(raw, "label", ["text"])  # the row with an empty text is dropped
    assert encoded["train"].features["label"].names == ["1", "3", "5"]
    assert list(encoded["train"]["label"]) == [2, 0, 1] and list(encoded["test"]["label"]) == [2, 0]

    (tmp_path / "bad.csv").write_text("text,label\na,pos\nb,neg\n")
    (tmp_path / "val.csv").write_text("text,label\nc,neutral\n")
    with pytest.raises(ValueError, match="neutral"):
        encode_labels(load_local_dataset({"train": tmp_path / "bad.csv", "validation": tmp_path / "val.csv"}))
    (tmp_path / "one.csv").write_text("text,label\na,pos\nb,pos\n")
    with pytest.raises(ValueError, match="at least 2"):
        encode_labels(load_local_dataset({"train": tmp_path / "one.csv"}))


def test_console_command_lists_the_methods(tmp_path, monkeypatch):
    """`hf-prune` is the script module's `console_main` (which returns None: the console script exits with
    `sys.exit(console_main())`); `--help` lists every method."""
    tomllib = pytest.importorskip("tomllib")
    entry = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]["hf-prune"]
    assert entry == "hf_prune.scripts.fine_tune_and_prune:console_main"
    received = []
    monkeypatch.setattr(fine_tune_and_prune, "main", lambda *args: received.append(args) or {"sparsity": 0.3})
    assert fine_tune_and_prune.console_main(["--output_dir", str(tmp_path), "--method", "taylor"]) is None
    assert type(received[0][-1]) is hf_prune.TaylorConfig
    run = subprocess.run(
        [sys.executable, "-m", "hf_prune.scripts.fine_tune_and_prune", "--help"],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert run.returncode == 0, run.stderr[-2000:]
    for method in hf_prune.available_methods():
        assert method in run.stdout


def test_the_core_package_leaves_the_application_out():
    """`import hf_prune` loads none of the scripts, and the application modules are no longer in the core."""
    code = (
        "import importlib.util, sys, hf_prune; "
        "print(sorted(m for m in sys.modules if m.startswith('hf_prune.scripts')), "
        "[m for m in ('hf_prune.cli', 'hf_prune.data', 'hf_prune.metrics') if importlib.util.find_spec(m)])"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert run.stdout.strip() == "[] []"
