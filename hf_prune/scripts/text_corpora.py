"""Real English text for causal language models, offline, and the token blocks they train and are evaluated on.

The news corpus is the Lee corpus that ships as test data in the `gensim` wheel (LGPL-2.1): 300 English news
articles (`lee_background.cor`, one article per line, about 75,000 SmolLM2 tokens), and 50 more (`lee.cor`).
The same wheel ships a shortened English Wikipedia dump (206 pages of 2016; Wikipedia text is CC BY-SA);
`load_wikipedia_articles` turns its 96 encyclopaedia articles (about 400,000 words) into plain text: general-domain
text to mix into a fine-tune so the model keeps what it knows outside the task. Only the files are read; gensim is
never imported, so `pip install --no-deps gensim==4.4.0` suffices.

```python
from hf_prune.scripts.text_corpora import load_news_articles, load_wikipedia_articles, token_blocks, token_stream

articles = load_news_articles()  # 300 strings
blocks = token_blocks(articles, tokenizer, block_size=512)  # Dataset with "input_ids", every row 512 tokens
stream = token_stream(articles, tokenizer)[:8192]  # one list of token ids, e.g. for language_modeling.perplexity
plain = token_stream(articles, tokenizer, bos=False, eos=False, separator="\n\n")  # one text, blank lines between
held_out = load_news_articles(held_out=True)  # the 50 other articles
general = load_wikipedia_articles()  # 96 strings, paragraphs separated by newlines
```
"""

from __future__ import annotations

import bz2
import html
import importlib.util
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from xml.etree import ElementTree

from datasets import Dataset


Separator = bool | str | int  # see `token_stream`
NEWS_PACKAGE = "gensim"
NEWS_INSTALL = "pip install --no-deps gensim==4.4.0"
NEWS_FILES = {False: "lee_background.cor", True: "lee.cor"}
NEWS_ENCODINGS = {False: "utf-8", True: "latin-1"}  # lee.cor has a few latin-1 pound signs


def news_articles_path(held_out: bool = False) -> Path:
    """Path of `lee_background.cor` (or of `lee.cor` if `held_out`) in the installed gensim wheel, located without
    importing gensim."""
    return _gensim_test_file(NEWS_FILES[held_out])


def _gensim_test_file(name: str) -> Path:
    """A file of the gensim wheel's test data, located without importing gensim."""
    spec = importlib.util.find_spec(NEWS_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    path = Path(locations[0]) / "test" / "test_data" / name if locations else None
    if path is None or not path.is_file():
        raise ImportError(f"{name} ships in the gensim wheel: `{NEWS_INSTALL}`.")
    return path


def read_documents(path: str | Path, encoding: str = "utf-8") -> list[str]:
    """A text file with one document per line: the lines, stripped of surrounding white space, blank ones skipped."""
    text = Path(path).read_text(encoding=encoding)
    return [line.strip() for line in text.splitlines() if line.strip()]


def load_news_articles(held_out: bool = False) -> list[str]:
    """The 300 news articles of `lee_background.cor` (or, if `held_out`, the 50 of `lee.cor`), one string each,
    stripped of surrounding white space."""
    return read_documents(news_articles_path(held_out), encoding=NEWS_ENCODINGS[held_out])


def token_stream(
    texts: Iterable[str], tokenizer, bos: Separator = True, eos: Separator = True, separator: str = ""
) -> list[int]:
    """The documents tokenized and concatenated into one list of ids, each preceded by the tokenizer's beginning of
    sequence token (`bos=True`) and followed by its end of sequence token (`eos=True`), where the tokenizer has them.

    `bos` and `eos` may also name another token (a token string or id), e.g. `eos="<|endoftext|>"` for a chat model
    whose end of sequence is an end-of-turn token, or be `False` for none. `separator` is text put between
    consecutive documents, tokenized as the start of the next one: `token_stream(texts, tokenizer, False, False,
    "\n\n")` reads the documents as one plain text with blank lines between them.
    """
    texts = list(texts)
    if separator:
        texts = texts[:1] + [separator + text for text in texts[1:]]
    prefix, suffix = _separator(tokenizer, bos, "bos"), _separator(tokenizer, eos, "eos")
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    return [token for ids in encoded for token in (*prefix, *ids, *suffix)]


def _separator(tokenizer, token: Separator, which: str) -> list[int]:
    """The ids that `bos` / `eos` stand for: none, the tokenizer's own token, or the token given."""
    if token is False or token is None:
        return []
    if token is True:
        own = getattr(tokenizer, f"{which}_token_id")
        return [] if own is None else [own]
    if isinstance(token, str):
        token_id = tokenizer.convert_tokens_to_ids(token)
        if token_id is None or (token_id == tokenizer.unk_token_id and token != tokenizer.unk_token):
            raise ValueError(f"{which}={token!r} is not a token of the tokenizer.")
        return [token_id]
    return [int(token)]


def token_blocks(
    texts: Sequence[str] | Dataset,
    tokenizer,
    block_size: int,
    bos: Separator = True,
    eos: Separator = True,
    separator: str = "",
    text_column: str = "text",
    keep_remainder: bool = False,
) -> Dataset:
    """Causal-LM training blocks the way `run_clm` makes them: the documents joined into one token stream (see
    `token_stream` for `bos`, `eos` and `separator`) and cut into consecutive blocks of `block_size` tokens, so a
    block may span documents. The last, shorter piece is dropped unless `keep_remainder`.

    Args:
        texts: the documents, as strings or as a `Dataset` whose `text_column` holds them.
        tokenizer: any Hugging Face tokenizer.
        block_size (`int`): tokens per block, at least 2.

    Returns:
        `Dataset` with one column `input_ids` (lists of `block_size` ids). A collator such as
        `DataCollatorForLanguageModeling(tokenizer, mlm=False)` adds the labels.
    """
    if block_size < 2:
        raise ValueError(f"block_size={block_size}: a block needs at least 2 tokens.")
    if isinstance(texts, Dataset):
        texts = texts[text_column]
    stream = token_stream(texts, tokenizer, bos=bos, eos=eos, separator=separator)
    end = len(stream) if keep_remainder else len(stream) // block_size * block_size
    return Dataset.from_dict({"input_ids": [stream[i : i + block_size] for i in range(0, end, block_size)]})


# -- Wikipedia ---------------------------------------------------------------------------------------------------------
WIKI_FILE = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
WIKI_END_SECTIONS = ("references", "see also", "external links", "further reading", "notes", "bibliography", "sources")
_DROPPED_LINKS = ("file:", "image:", "category:", "media:", "wikipedia:", "wp:", "help:", "portal:", "template:")
_DROPPED_TAGS = re.compile(
    r"<(ref|math|gallery|timeline|syntaxhighlight|source|score)\b[^>]*?(/>|>.*?</\1\s*>)", re.S | re.I
)
_TEMPLATE = re.compile(r"\{\{[^{}]*\}\}")
_TABLE = re.compile(r"\{\|(?:(?!\{\|).)*?\|\}", re.S)
_LINK = re.compile(r"\[\[([^\[\]]*)\]\]")
_EXTERNAL_LINK = re.compile(r"\[(?:https?:)?//\S+(?: ([^\]]*))?\]")
_UNBALANCED = re.compile(r"\{\{|\}\}|\[\[|\]\]")
_HEADING = re.compile(r"^(=+)\s*(.*?)\s*\1\s*$")


def wikipedia_dump_path() -> Path:
    """Path of the shortened English Wikipedia dump (206 pages of 2016, MediaWiki XML, bz2) in the gensim wheel."""
    return _gensim_test_file(WIKI_FILE)


def load_wikipedia_articles(min_words: int = 100) -> list[str]:
    """The encyclopaedia articles of the gensim wheel's Wikipedia sample as plain text, one string each (paragraphs
    separated by a newline), in dump order; redirects, other namespaces and articles shorter than `min_words` words
    are skipped. General-domain text: mixed into the training data it keeps what the model knows outside the
    fine-tuning domain (see `CausalLMArguments.general_text`)."""
    articles = []
    with bz2.open(wikipedia_dump_path()) as dump:
        for _, element in ElementTree.iterparse(dump):
            if element.tag.rsplit("}", 1)[-1] != "page":
                continue
            fields = {child.tag.rsplit("}", 1)[-1]: child for child in element.iter()}
            text = (fields["text"].text if "text" in fields else None) or ""
            if (
                fields["ns"].text == "0"
                and "redirect" not in fields
                and not text.lstrip().lower().startswith("#redirect")
            ):
                article = wiki_to_text(text)
                if len(article.split()) >= min_words:
                    articles.append(article)
            element.clear()
    return articles


def wiki_to_text(markup: str) -> str:
    """Plain prose from MediaWiki markup: templates, tables, references, files and categories dropped, links and
    external links replaced by their text, bold and italics quotes removed, headings, list lines and lines left with
    unbalanced markup dropped, and the article cut at its first back-matter section ("References", "See also", ...).
    Paragraphs are joined by newlines."""
    text = html.unescape(re.sub(r"<!--.*?-->", "", markup, flags=re.S))
    text = _DROPPED_TAGS.sub("", text)
    text = _innermost_first(_TEMPLATE, "", text)
    text = _innermost_first(_TABLE, "", text)
    text = _innermost_first(_LINK, _link_text, text)
    text = _EXTERNAL_LINK.sub(lambda m: m.group(1) or "", text)
    text = re.sub(r"<[^<>]+>", "", text).replace("'''", "").replace("''", "")
    paragraphs = []
    for line in text.splitlines():
        heading = _HEADING.match(line.strip())
        if heading and heading.group(2).lower() in WIKI_END_SECTIONS:
            break
        if heading or not line.strip() or line.lstrip()[0] in "*#:;|!{}=" or _UNBALANCED.search(line):
            continue  # headings, lists, table rows, and lines whose markup did not balance (a literal brace)
        line = re.sub(r"\(\s*[,;]?\s*\)", "", line)  # parentheses emptied by a removed template
        line = re.sub(r"\s*[,;]\s*\)", ")", re.sub(r"\(\s*[,;]\s*", "(", line))
        paragraphs.append(re.sub(r"\s+", " ", line).replace(" ,", ",").replace(" .", ".").strip())
    return "\n".join(p for p in paragraphs if p)


def _innermost_first(pattern: re.Pattern, replacement, text: str) -> str:
    """Apply `pattern` until nothing matches, so nested constructs are removed from the inside out."""
    while True:
        text, count = pattern.subn(replacement, text)
        if not count:
            return text


def _link_text(match: re.Match) -> str:
    """`[[target|label]]` -> label, `[[target]]` -> target; files, categories and interwiki links -> nothing."""
    target, _, label = match.group(1).partition("|")
    if target.lower().lstrip(":").startswith(_DROPPED_LINKS) or re.match(r"^[a-z]{2,3}(-[a-z]+)?:", target):
        return ""
    return (label.rsplit("|", 1)[-1] if label else target).strip()
