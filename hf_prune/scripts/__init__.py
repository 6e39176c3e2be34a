"""hf_prune's scripts, shipped with the package but outside its core (`import hf_prune` loads none of them).

* `fine_tune_and_prune`: the `hf-prune` command (argument dataclasses, `make_parser`, `main`).
* `parser`: `PruningScriptParser`, the one parser of every script: `HfArgumentParser` over a script's dataclasses
  plus the config class of the method picked with `--method`, from the command line or one JSON/YAML file.
* `classification`, `data`, `metrics/`: text-classification data, model loading and offline `evaluate` metrics.
* `causal_lm`, `pretrained_llm`, `text_corpora`, `language_modeling`: the decoder-LLM pieces (SmolLM2 converted
  from its GGUF package, the news articles, token blocks, perplexity, tokens/s, samples) of
  `examples/prune_causal_lm.py` and `benchmarks/llm_benchmark.py`.
* `reporting`, `plots`, `utils`: `metrics.json`, the summary, the plots, logging and the output-folder check.
"""
