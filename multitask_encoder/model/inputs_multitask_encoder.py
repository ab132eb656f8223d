"""Input kinds: what one row of a task holds and how it becomes encoder inputs, a registry beside the task types.
A task type names its kind (`TaskType.input_kind`, or `input_encoding(options)` where an option picks it);
everything that reads rows or inputs asks the kind instead of comparing names.

    kind         a row's columns                      encoder inputs                     predict takes
    text         text                                 input_ids, ... [batch, seq]         a string
    tokens       text, tokens (the words)             input_ids, ... + word_ids           a string
    pair         text, text_pair[, text_negative]     input_ids, ... of the first text,   (text, text_pair)
                                                      pair_* (and negative_*) of the
                                                      texts encoded apart
    pair_joint   text, text_pair                      one `[CLS] a [SEP] b` input         (text, text_pair)

Copied next to the weights with the modeling file (it imports nothing but its siblings' libraries).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar


class InputKind:
    """One kind of input. `content` is the shape of a row's content in the data ("text", "tokens" or "pair":
    what a data format must provide); `roles` the content columns of a labelled row, in order, and
    `optional_roles` those a row may leave empty; `apart` maps the prefix of each text encoded on its own (an
    encoder input `<prefix>_input_ids`, ...) to the role holding it."""

    name: ClassVar[str]
    content: ClassVar[str]
    roles: ClassVar[tuple[str, ...]]
    optional_roles: ClassVar[tuple[str, ...]] = ()
    apart: ClassVar[dict[str, str]] = {}

    @property
    def reads_pairs(self) -> bool:
        """True when a row (and a `predict` input) is two texts."""
        return self.content == "pair"

    @property
    def joint(self) -> bool:
        """True when a pair is one `[CLS] a [SEP] b` encoder input (a cross-encoder)."""
        return self.reads_pairs and not self.apart

    @property
    def word_level(self) -> bool:
        """True when a row's content is a list of words, each with a label (tokens tokenised with `word_ids`)."""
        return self.content == "tokens"

    def tokenize(self, tokenizer: Any, batch: Mapping[str, list], max_length: int) -> Any:
        """A batch of labelled rows' content -> the tokenizer's encoding of each row's main input (unpadded,
        truncated to `max_length`)."""
        return tokenizer(batch["text"], truncation=True, max_length=max_length)


class TextInput(InputKind):
    name = "text"
    content = "text"
    roles = ("text",)


class TokensInput(InputKind):
    """Words, tokenised as split words (`is_split_into_words`): `word_ids` map every token to its word. The
    row's `text` is the words joined by spaces."""

    name = "tokens"
    content = "tokens"
    roles = ("text", "tokens")

    def tokenize(self, tokenizer, batch, max_length):
        return tokenizer(batch["tokens"], is_split_into_words=True, truncation=True, max_length=max_length)


class PairInput(InputKind):
    """Two texts, each encoded on its own (a second encoder pass gives the second text's embedding); a
    contrastive row may add a negative text, encoded on its own too."""

    name = "pair"
    content = "pair"
    roles = ("text", "text_pair", "text_negative")
    optional_roles = ("text_negative",)
    apart: ClassVar[dict[str, str]] = {"pair": "text_pair", "negative": "text_negative"}


class JointPairInput(InputKind):
    """Two texts as one `[CLS] a [SEP] b` input (a cross-encoder)."""

    name = "pair_joint"
    content = "pair"
    roles = ("text", "text_pair")

    def tokenize(self, tokenizer, batch, max_length):
        return tokenizer(batch["text"], batch["text_pair"], truncation=True, max_length=max_length)


INPUT_KINDS: dict[str, InputKind] = {
    kind.name: kind for kind in (TextInput(), TokensInput(), PairInput(), JointPairInput())
}
# Every text some kind encodes on its own: encoder-input prefix -> the labelled rows' column holding it. The
# tokenised rows hold `<prefix>_input_ids`, ...; the collator pads them into `forward`'s `<prefix>_inputs`.
SECOND_TEXTS: dict[str, str] = {
    prefix: role for kind in INPUT_KINDS.values() for prefix, role in kind.apart.items()
}
