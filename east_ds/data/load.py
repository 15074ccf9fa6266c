"""Datasets and prompts: GSM8K and MATH from a local JSONL/Parquet file or a hub dataset name.

A loaded dataset is a DataFrame with `question_id, question, gold`: the gold answer is the text after the last
`#### ` of a GSM8K answer (commas removed), and for MATH the `answer` field when present, else the last
`\\boxed{}` of the solution. Prompts are the EAST system prompt plus the question as the user turn, rendered
with the tokenizer's chat template (or a plain fallback for tokenizers without one).
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from east_ds.tables import TableError, read_table

SYSTEM_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."
# Used when a tokenizer has no chat template (base models): plain text a base model can continue.
FALLBACK_TEMPLATE = "{system}\n\nQuestion: {question}\nAnswer:"


def gsm8k_gold(answer: str) -> str:
    """The gold of a GSM8K `answer` field: the text after the last '#### ', commas removed."""
    if "####" not in answer:
        raise ValueError("GSM8K answer has no '#### ' line")
    return answer.rsplit("####", 1)[1].strip().replace(",", "")


def math_gold(row: dict) -> str:
    """The gold of a MATH row: its `answer` field when present, else the last \\boxed{} of `solution`."""
    ans = row.get("answer")
    if isinstance(ans, str) and ans.strip():
        return ans.strip()
    from east_ds.grading import extract_answer

    found = extract_answer(str(row.get("solution", "")))
    if found is None:
        raise ValueError("MATH row has neither an `answer` field nor a \\boxed{} in its solution")
    return found


def gold_of(row: dict, fmt: str) -> str:
    """The gold answer of one raw row in format `fmt` ("gsm8k" or "math"); ValueError when it does not parse."""
    if fmt == "gsm8k":
        if "answer" not in row:
            raise ValueError("no `answer` field")
        return gsm8k_gold(str(row["answer"]))
    if fmt == "math":
        return math_gold(row)
    raise ValueError(f"unknown dataset format {fmt!r} (gsm8k or math)")


def load_raw(source: str, split: str) -> tuple[pd.DataFrame, str]:
    """A DataFrame of raw rows from a local file, or from the hub when `source` is not a local path."""
    p = Path(source)
    if p.suffix.lower() in (".jsonl", ".json", ".parquet") or p.exists():
        return read_table(p), str(p)
    # Hub dataset name (e.g. "openai/gsm8k:main"). Not reachable on the development machines; kept thin.
    try:
        import datasets  # noqa: F401  (optional dependency)
    except ImportError:
        raise TableError(
            f"{source!r} is not a local file and the `datasets` package is not installed to load it from the hub"
        ) from None
    name, _, subset = source.partition(":")
    ds = datasets.load_dataset(name, subset or None, split=split)
    return ds.to_pandas(), f"{source}[{split}]"


def load_dataset(source: str, fmt: str, split: str = "train", limit: int | None = None) -> pd.DataFrame:
    """Load GSM8K (`fmt="gsm8k"`) or MATH (`fmt="math"`) as `question_id, question, gold` (+ source columns).

    `question_id` is the row's `id`/`unique_id` when it has one, else `<split>-<row index>`. A row without a
    readable gold answer is an error that names the source and the row.
    """
    df, where = load_raw(source, split)
    qcol = "question" if "question" in df.columns else "problem"
    if qcol not in df.columns:
        raise TableError(f"{where}: no `question` or `problem` column; found {list(df.columns)}")
    if limit is not None:
        df = df.iloc[:limit]
    golds = []
    for i, row in enumerate(df.to_dict("records")):
        try:
            golds.append(gold_of(row, fmt))
        except ValueError as e:
            raise TableError(f"{where}: row {i}: {e}") from None
    id_col = next((c for c in ("question_id", "id", "unique_id") if c in df.columns), None)
    ids = df[id_col].astype(str).tolist() if id_col else [f"{split}-{i}" for i in range(len(df))]
    if len(set(ids)) != len(ids):
        raise TableError(f"{where}: question ids are not unique")
    return pd.DataFrame({"question_id": ids, "question": df[qcol].astype(str).tolist(), "gold": golds})


def check_model_path(path: str) -> None:
    """Fail fast, naming `path`, when it is neither a local model directory nor a hub name we could load."""
    if not path:
        raise FileNotFoundError("no model path given")
    p = Path(path).expanduser()
    if p.exists():
        if not (p / "config.json").is_file():
            raise FileNotFoundError(f"model path {path!r} exists but has no config.json")
        return
    looks_local = path.startswith(("/", ".", "~")) or path.count("/") != 1
    if looks_local:
        raise FileNotFoundError(f"model path {path!r} does not exist")
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(path, "config.json"), str):
            raise FileNotFoundError(
                f"model {path!r} is not a local directory and is not in the Hugging Face cache (HF_HUB_OFFLINE=1)"
            )


def render_prompt(tokenizer, question: str, system_prompt: str = SYSTEM_PROMPT) -> str:
    """The prompt text for one question: system prompt + question as the user turn, via the chat template.

    Tokenizers without a chat template get FALLBACK_TEMPLATE. The result already contains any BOS token the
    template adds, so tokenize it with `add_special_tokens=False`.
    """
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "system", "content": system_prompt}, {"role": "user", "content": question}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return FALLBACK_TEMPLATE.format(system=system_prompt, question=question)


def load_tokenizer(path: str, trust_remote_code: bool = False):
    """The model's tokenizer (hub name or local directory)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
