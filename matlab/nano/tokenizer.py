"""A word-level tokenizer for the synthetic world, in Hugging Face format."""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

SPECIALS = ("<pad>", "<eos>", "<bos>", "<unk>")  # ids 0..3, as Gemma 3n's config expects pad 0, eos 1, bos 2


def build_tokenizer(vocabulary: list[str]) -> PreTrainedTokenizerFast:
    vocab = {token: index for index, token in enumerate([*SPECIALS, *vocabulary])}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<bos>", eos_token="<eos>",
                                   pad_token="<pad>", unk_token="<unk>", add_bos_token=True)
