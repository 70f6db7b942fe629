"""Tiny models, tokenizers and tasks for fast CPU tests (built from configs, no downloads)."""

from __future__ import annotations

import functools

import torch
from datasets import Dataset
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

import model_utils

# Toy vocabulary: 4 prompt symbols, 12 answer symbols, specials.
PROMPTS = ["A", "B", "C", "D"]
ANSWERS = [f"t{i}" for i in range(12)]
TARGET = {"A": "t3", "B": "t7", "C": "t0", "D": "t10"}


@functools.lru_cache(maxsize=1)
def embedded_tokenizer():
    """The real SmolLM2 tokenizer (converted once from the embedded GGUF, then cached)."""
    return AutoTokenizer.from_pretrained(model_utils.embedded_model_dir("smollm2-135m"))


def toy_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {tok: i for i, tok in enumerate(["[PAD]", "[EOS]", "[BOS]", *PROMPTS, *ANSWERS])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[PAD]"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="[PAD]", eos_token="[EOS]", bos_token="[BOS]")
    tok.chat_template = "{% for m in messages %}{{ m['content'] }} {% endfor %}"
    return tok


def tiny_llama(tokenizer, seed: int = 0, hidden: int = 32, layers: int = 2, init_std: float = 0.02) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        initializer_range=init_std,
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(cfg)


def toy_dataset(repeats: int = 16) -> Dataset:
    rows = [{"prompt": [{"role": "user", "content": p}], "answer": TARGET[p]} for p in PROMPTS] * repeats
    return Dataset.from_list([{**r, "row_id": f"toy:{i}"} for i, r in enumerate(rows)])


def unique_toy_dataset() -> Dataset:
    """256 distinct prompts (every sequence of 4 prompt symbols); the target is the first symbol's. Distinct prompts
    let a multi-process test tell every trained group apart by its prompt."""
    import itertools

    rows = [{"prompt": [{"role": "user", "content": " ".join(seq)}], "answer": TARGET[seq[0]], "row_id": f"toy4:{i}"}
            for i, seq in enumerate(itertools.product(PROMPTS, repeat=4))]
    return Dataset.from_list(rows)


def make_toy_correctness(tokenizer):
    """+1 iff the first completion token is the prompt's target symbol (chance ~1/16)."""

    def correctness(completion_ids, answer, **kwargs):
        return [
            1.0 if ids and ids[0] == tokenizer.convert_tokens_to_ids(a) else -1.0
            for ids, a in zip(completion_ids, answer, strict=True)
        ]

    return correctness


def first_token_parity_reward(completion_ids, **kwargs):
    """Informative about half the time on any model: +1 iff the first token id is even."""
    return [1.0 if ids and ids[0] % 2 == 0 else -1.0 for ids in completion_ids]


first_token_parity_reward.__name__ = "correctness"


def greedy_accuracy(model, tokenizer) -> float:
    """Share of toy prompts whose greedy first token is the target."""
    model.eval()
    hits = 0
    for p in PROMPTS:
        text = tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False)
        ids = tokenizer(text, return_tensors="pt")
        with torch.no_grad():
            logits = model(**ids).logits[0, -1]
        hits += int(logits.argmax().item() == tokenizer.convert_tokens_to_ids(TARGET[p]))
    return hits / len(PROMPTS)


def sampled_accuracy(model, tokenizer) -> float:
    """Expected accuracy at temperature 1: mean probability of the target first token."""
    model.eval()
    probs = []
    for p in PROMPTS:
        text = tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False)
        ids = tokenizer(text, return_tensors="pt")
        with torch.no_grad():
            logits = model(**ids).logits[0, -1]
        probs.append(torch.softmax(logits.float(), -1)[tokenizer.convert_tokens_to_ids(TARGET[p])].item())
    return sum(probs) / len(probs)
