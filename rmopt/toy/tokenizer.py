"""A byte-level BPE tokenizer for the toy world, trained locally in about a second."""

from __future__ import annotations

from rmopt.prompts import ASSISTANT, EOS, PAD, PROMPTER


def train_toy_tokenizer(vocab_size: int = 512, seed: int = 12345):
    """Train on the toy corpus and wrap it as a Hugging Face fast tokenizer.

    EOS doubles as BOS (as in Pythia); ``<|padding|>`` is the pad token so reward pooling and loss
    masks never confuse padding with the EOS that closes an answer.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from rmopt.toy.world import corpus

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
