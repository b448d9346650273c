"""A byte-level BPE tokenizer for the toy world, trained locally in about a second."""

from __future__ import annotations

from rmopt.prompts import ASSISTANT, EOS, PAD, PROMPTER
from rmopt.toy import DEFAULT_WORLD, VOCAB_SIZES, get_world


def train_toy_tokenizer(vocab_size: int | None = None, seed: int = 12345, world: str = DEFAULT_WORLD):
    """Train on toy world ``world``'s corpus and wrap it as a Hugging Face fast tokenizer.

    ``vocab_size`` defaults to the world's own (:data:`rmopt.toy.VOCAB_SIZES`: large enough that
    every word of the world is one or two tokens).

    EOS doubles as BOS (as in Pythia); ``<|padding|>`` is the pad token so reward pooling and loss
    masks never confuse padding with the EOS that closes an answer.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = get_world(world).corpus
    vocab_size = VOCAB_SIZES[world] if vocab_size is None else vocab_size

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS, PAD, PROMPTER, ASSISTANT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(seed=seed), trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=EOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=[PROMPTER, ASSISTANT],
        model_max_length=512,
    )
