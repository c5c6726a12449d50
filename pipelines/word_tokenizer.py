"""Word-level tokenizers for small random-weight model folders: the real tokenizers live on the model hub, which
these folders must not need.  Built with the ``tokenizers`` library and wrapped as transformers'
``PreTrainedTokenizerFast``, so diffusers' pipelines tokenize with them exactly as with the real ones."""

from __future__ import annotations

# Enough words for the prompts tests render on small folders of every family.
WORDS = (
    "a the red green blue yellow white black circle square triangle cat dog car moving left right up down on "
    "and in with background gradient of sky sea city street forest"
).split()


def word_tokenizer(words=WORDS):
    """A whitespace word-level tokenizer over ``words`` with T5's special tokens (<pad> 0, </s> 1, <unk> 2)."""
    from tokenizers import Tokenizer, models, pre_tokenizers  # deferred: tokenizers
    from transformers import PreTrainedTokenizerFast  # deferred: transformers

    vocabulary = ["<pad>", "</s>", "<unk>"] + sorted(set(words))
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocabulary)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
