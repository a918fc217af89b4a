"""Text tokenisation for VIOLET: bert-base-uncased when a local copy is given, otherwise a small
lowercase WordPiece trained on the captions, so the synthetic set runs with nothing downloaded.

VIOLETv2 feeds `size_txt` = 32 tokens, "[CLS] ... [SEP]" padded (docs/method.md §1). Both kinds of tokenizer
produce exactly that layout through `TextTokenizer.encode`, and both are saved into the run
directory (`save`) so that resume and finetuning reload the very same vocabulary (`load_tokenizer`).
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Iterable

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, BertTokenizerFast, PreTrainedTokenizerFast

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
BERT_FILES = ("tokenizer.json", "vocab.txt")  # either one makes a usable bert-base-uncased folder
CONTINUATION = "##"  # WordPiece prefix of a piece that continues a word
# Always in the trained vocabulary, so digits and punctuation absent from the captions are not [UNK].
BASE_ALPHABET = string.ascii_lowercase + string.digits + string.punctuation


class TextTokenizer:
    """A fast Hugging Face tokenizer behind the few calls the trainer needs."""

    def __init__(self, tokenizer: PreTrainedTokenizerFast) -> None:
        missing = [name for name in ("pad", "cls", "sep", "mask", "unk")
                   if getattr(tokenizer, f"{name}_token_id") is None]
        if missing:
            raise ValueError(f"tokenizer lacks the special tokens {missing}; VIOLET needs "
                             f"{', '.join(SPECIAL_TOKENS)}")
        self.hf = tokenizer

    @property
    def vocab_size(self) -> int:
        return len(self.hf)  # includes added tokens, unlike `hf.vocab_size`

    @property
    def pad_id(self) -> int:
        return int(self.hf.pad_token_id)

    @property
    def cls_id(self) -> int:
        return int(self.hf.cls_token_id)

    @property
    def sep_id(self) -> int:
        return int(self.hf.sep_token_id)

    @property
    def mask_id(self) -> int:
        return int(self.hf.mask_token_id)

    @property
    def unk_id(self) -> int:
        return int(self.hf.unk_token_id)

    def encode(self, texts: list[str], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """texts -> (ids (N, max_len) int64, attention_mask (N, max_len) int64).

        Each row is "[CLS] tokens [SEP] [PAD]..."; long texts are truncated before [SEP], which is
        always kept.
        """
        if max_len < 2:
            raise ValueError(f"max_len must leave room for [CLS] and [SEP], got {max_len}")
        if isinstance(texts, str):
            raise TypeError("encode takes a list of texts, got a single str")
        out = self.hf(list(texts), max_length=max_len, padding="max_length", truncation=True,
                      return_tensors="pt", return_token_type_ids=False)
        return out["input_ids"].to(torch.int64), out["attention_mask"].to(torch.int64)

    def special_mask(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (...) -> bool (...), True at [CLS], [SEP] and [PAD]: the positions MLM never masks."""
        return (ids == self.cls_id) | (ids == self.sep_id) | (ids == self.pad_id)

    def decode_token(self, token_id: int) -> str:
        return self.hf.convert_ids_to_tokens(int(token_id))

    def token_id(self, word: str) -> int | None:
        """The id of `word` when it is exactly one known token (after lowercasing), else None.

        Open-ended QA classifies answers over single tokens; a multi-piece or unknown answer has no
        such class.
        """
        ids = self.hf(word, add_special_tokens=False)["input_ids"]
        if len(ids) != 1 or ids[0] == self.unk_id:
            return None
        return int(ids[0])

    def save(self, directory: Path | str) -> Path:
        """Write the tokenizer files into `directory` (created if needed); returns it."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.hf.save_pretrained(str(directory))
        return directory


def build_tokenizer(path: str | Path | None, corpus: Iterable[str], vocab_size: int = 4000,
                    save_dir: Path | None = None) -> TextTokenizer:
    """A local bert-base-uncased folder when `path` is given (never downloaded), otherwise a
    lowercase WordPiece of at most `vocab_size` tokens trained on `corpus`; saved to `save_dir` if set.

    Raises:
        FileNotFoundError: `path` is not a folder holding tokenizer.json or vocab.txt.
    """
    tokenizer = _load_local_bert(Path(path)) if path is not None else train_wordpiece(corpus, vocab_size)
    if save_dir is not None:
        tokenizer.save(save_dir)
    return tokenizer


def load_tokenizer(directory: Path | str) -> TextTokenizer:
    """Reload a tokenizer written by `TextTokenizer.save` (offline)."""
    directory = Path(directory)
    if not (directory / "tokenizer_config.json").is_file():
        raise FileNotFoundError(f"{directory}: no saved tokenizer here (tokenizer_config.json is missing)")
    return TextTokenizer(AutoTokenizer.from_pretrained(str(directory), local_files_only=True, use_fast=True))


def train_wordpiece(corpus: Iterable[str], vocab_size: int = 4000) -> TextTokenizer:
    """A BERT-style lowercase WordPiece trained on `corpus`; the same corpus always gives the same
    vocabulary and ids. Meant for caption sets of a few thousand lines; real data uses bert-base-uncased."""
    if vocab_size <= len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must exceed the {len(SPECIAL_TOKENS)} special tokens, got {vocab_size}")
    texts = [t for t in corpus if t]
    if not texts:
        raise ValueError("cannot train a tokenizer on an empty corpus; give captions or a bert-base-uncased path")
    # bert-base-uncased's text pipeline: clean, split CJK, strip accents, lowercase, then split on
    # whitespace and punctuation, so the trained vocabulary tokenises like BERT would.
    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    alphabet = set(BASE_ALPHABET)
    for text in texts:
        alphabet.update(normalizer.normalize_str(text))
    alphabet = sorted(alphabet - set(string.whitespace))

    # tokenizers' trainer (BPE underneath) creates the "##x" continuation pieces lazily in hash-map
    # order, and their ids break ties between equally frequent merges, so two trainings on one corpus
    # can differ (huggingface/tokenizers#1794). Declaring every "##x" up front fixes their ids and
    # makes training deterministic; they are declared as specials only for the trainer, the final
    # tokenizer below treats them as ordinary vocabulary.
    seeded = list(SPECIAL_TOKENS) + [CONTINUATION + c for c in alphabet]
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=seeded, initial_alphabet=alphabet,
                                        continuing_subword_prefix=CONTINUATION, show_progress=False)
    scratch = Tokenizer(models.WordPiece(unk_token="[UNK]", continuing_subword_prefix=CONTINUATION))
    scratch.normalizer, scratch.pre_tokenizer = normalizer, pre_tokenizer
    scratch.train_from_iterator(texts, trainer=trainer)

    backend = Tokenizer(models.WordPiece(scratch.get_vocab(), unk_token="[UNK]",
                                         continuing_subword_prefix=CONTINUATION))
    backend.normalizer, backend.pre_tokenizer = normalizer, pre_tokenizer
    backend.decoder = decoders.WordPiece(prefix=CONTINUATION)
    backend.add_special_tokens(list(SPECIAL_TOKENS))
    cls_id, sep_id = backend.token_to_id("[CLS]"), backend.token_to_id("[SEP]")
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
    hf = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                 sep_token="[SEP]", mask_token="[MASK]")
    return TextTokenizer(hf)


def _load_local_bert(path: Path) -> TextTokenizer:
    if not path.is_dir() or not any((path / name).is_file() for name in BERT_FILES):
        raise FileNotFoundError(
            f"tokenizer path {path} is not a folder with {' or '.join(BERT_FILES)}; download "
            f"bert-base-uncased from the Hugging Face hub into that folder (nothing is downloaded at run time), "
            f"or leave the tokenizer unset to train a WordPiece on the captions")
    # local_files_only: a missing file must fail here, never turn into a hub request. BertTokenizerFast
    # (not AutoTokenizer) so that a bare vocab.txt, without tokenizer_config.json, loads as uncased BERT.
    return TextTokenizer(BertTokenizerFast.from_pretrained(str(path), local_files_only=True))
