"""A word-level tokenizer over the caption grammar, built offline and saved like any HF tokenizer."""

from __future__ import annotations

from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from t2i_rl_bench.world.captions import vocabulary

SPECIAL = {"pad": "[PAD]", "unk": "[UNK]", "bos": "[BOS]", "eos": "[EOS]"}
MAX_LENGTH = 16  # the longest caption is 12 tokens with [BOS] and [EOS]


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Ids: [PAD]=0, [UNK]=1, [BOS]=2, [EOS]=3, then the grammar's words in a fixed order."""
    vocab = {tok: i for i, tok in enumerate(SPECIAL.values())}
    for word in vocabulary():
        vocab.setdefault(word, len(vocab))
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=SPECIAL["unk"]))
    core.pre_tokenizer = pre_tokenizers.Whitespace()  # also splits "," off a word
    core.post_processor = processors.TemplateProcessing(
        single=f"{SPECIAL['bos']} $A {SPECIAL['eos']}",
        special_tokens=[(SPECIAL["bos"], vocab[SPECIAL["bos"]]), (SPECIAL["eos"], vocab[SPECIAL["eos"]])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token=SPECIAL["pad"],
        unk_token=SPECIAL["unk"],
        bos_token=SPECIAL["bos"],
        eos_token=SPECIAL["eos"],
        model_max_length=MAX_LENGTH,
    )
