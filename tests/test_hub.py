"""Publishing to a real HTTP server on 127.0.0.1 that speaks the Hub API, and reloading from it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from .hub_server import Hub


def run_against(hub: Hub, script: Path, workdir: Path) -> subprocess.CompletedProcess:
    """Run `script` in a fresh process whose Hub endpoint is `hub` (it must be set before huggingface_hub loads)."""
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_TOKEN": "hf_fake", "HF_HOME": str(workdir / "home")}
    env.pop("HF_HUB_OFFLINE", None)
    return subprocess.run(
        [sys.executable, str(script)], check=False, capture_output=True, text=True, env=env, cwd=workdir, timeout=600
    )


def test_push_and_reload_round_trip(tmp_path):
    with Hub(tmp_path / "hub") as hub:
        run = run_against(hub, Path(__file__).parent / "hub_roundtrip.py", tmp_path)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
        report = json.loads(run.stdout.split("REPORT ", 1)[1])

        assert report["bert_remote_code"] <= 1e-5 and report["bert_auto"] <= 1e-5
        assert report["llama_stock"] <= 1e-5 and report["llama_stock_class"] == "LlamaForCausalLM"
        assert report["trainer_auto"] <= 1e-5 and report["trainer_tokenizer"].startswith("Bert")
        assert report["trainer_tokenizer_ids"] == [5 + 3, 5 + 50, 5 + 93]  # the published vocabulary, no [UNK]

        per_layer = set(hub.files("tester/bert-pruned"))
        assert {
            "config.json",
            "model.safetensors",
            "modeling_hf_prune.py",
            "pruning_config.json",
            "README.md",
            "kept_units.png",
        } <= per_layer
        assert "modeling_hf_prune.py" not in hub.files("tester/llama-pruned")
        # model.push_to_hub, without a Trainer, publishes hf_prune's card, not transformers' boilerplate
        for repo, loading in (
            ("bert-pruned", 'from_pretrained("tester/bert-pruned", trust_remote_code=True)'),
            ("llama-pruned", 'AutoModelForCausalLM.from_pretrained("tester/llama-pruned")'),
        ):
            pushed = (tmp_path / "hub" / "tester" / repo / "README.md").read_text()
            assert "Model Card for Model ID" not in pushed and "<!-- hf_prune:start -->" in pushed, repo
            assert loading in pushed, repo
            assert {"hf_prune", "pruned"} <= set(yaml.safe_load(pushed.split("---")[1])["tags"]), repo
        trained = set(hub.files("tester/trained-pruned"))
        assert {"README.md", "tokenizer.json", "pruning_config.json", "modeling_hf_prune.py"} <= trained

        card = (tmp_path / "hub" / "tester" / "trained-pruned" / "README.md").read_text()
        metadata = yaml.safe_load(card.split("---")[1])
        assert {"hf_prune", "pruned", "magnitude"} <= set(metadata["tags"])
        assert metadata["library_name"] == "transformers" and metadata["pipeline_tag"] == "text-classification"
        assert 'from_pretrained("tester/trained-pruned", trust_remote_code=True)' in card
        # finalize() evaluated on eval_dataset before and after pruning (no compute_metrics: the loss only)
        assert "| metric | before pruning | after pruning |" in card and "\n| loss | " in card
        assert "latency (cpu" in card and "## Training hyper-parameters" in card and "eval: loss" not in card


def test_failed_push_leaves_the_local_folder_complete(tmp_path):
    """The Hub refuses the commit: the push raises, and the saved folder is untouched and still loads."""
    script = tmp_path / "push.py"
    script.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "import torch, hf_prune\n"
        "from tiny_models import FAMILIES, build, inputs, logits\n"
        "model = build(FAMILIES[0])\n"
        "hf_prune.prune_structures(model, heads={1: [0]}, neurons={0: [1, 2]})\n"
        f"model.save_pretrained({str(tmp_path / 'local')!r})\n"
        "try:\n"
        "    model.push_to_hub('tester/refused')\n"
        "except Exception as error:\n"
        "    print('PUSH FAILED', type(error).__name__)\n"
        f"again = hf_prune.AutoPrunedModel.from_pretrained({str(tmp_path / 'local')!r})\n"
        "assert torch.equal(logits(again, inputs(FAMILIES[0])), logits(model, inputs(FAMILIES[0])))\n"
    )
    with Hub(tmp_path / "hub") as hub:
        hub.fail_commits = True
        run = run_against(hub, script, tmp_path)
        assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
        assert "PUSH FAILED" in run.stdout
        assert hub.files("tester/refused") == []
        local = sorted(p.name for p in (tmp_path / "local").iterdir())
        assert {"config.json", "model.safetensors", "modeling_hf_prune.py", "pruning_config.json", "README.md"} <= set(
            local
        )


def test_model_card_updates_an_existing_readme(tmp_path):
    import hf_prune

    from .tiny_models import FAMILIES, build

    model = build(FAMILIES[0])
    hf_prune.prune_structures(model, heads={0: [1]}, neurons={1: [0, 1, 2]})
    readme = tmp_path / "README.md"
    readme.write_text("---\nlicense: mit\ntags:\n- mine\n---\n# My notes\n\nKeep this paragraph.\n")
    model.save_pretrained(tmp_path)
    first = readme.read_text()
    metadata = yaml.safe_load(first.split("---")[1])
    assert metadata["license"] == "mit" and {"mine", "hf_prune", "pruned"} <= set(metadata["tags"])
    assert "Keep this paragraph." in first and first.count("<!-- hf_prune:start -->") == 1
    model.save_pretrained(tmp_path)  # saving again replaces hf_prune's section only
    second = readme.read_text()
    assert second.count("<!-- hf_prune:start -->") == 1 and "Keep this paragraph." in second
    assert (tmp_path / "kept_units.png").stat().st_size > 1000


def test_model_card_gives_one_row_to_each_run_of_identical_layers():
    import hf_prune
    from hf_prune.model_card import render_model_card

    from .tiny_models import FAMILY

    config = FAMILY["llama"].make_config()
    config.num_hidden_layers = 4
    model = FAMILY["llama"].task_class(config)
    hf_prune.prune_structures(model, neurons={0: [0, 1], 1: [2, 3], 3: [4, 5]})
    rows = [line for line in str(render_model_card(model)).splitlines() if line.startswith("| ") and "/ 48 |" in line]
    assert rows == [
        "| 0–1 | 4 / 4 | 2 / 2 | 46 / 48 |",  # same counts: one row
        "| 2 | 4 / 4 | 2 / 2 | 48 / 48 |",
        "| 3 | 4 / 4 | 2 / 2 | 46 / 48 |",  # the same as 0-1 but not next to them
    ]
