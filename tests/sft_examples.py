"""A small weighted SFT examples table of arithmetic questions, for tests that train a tiny model for real."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def write_sft_examples(tok, path: Path, count: int, weights: tuple[float, float]) -> str:
    """Write `count` examples ("What is i + 3i?", answered with a boxed 4i) to `path` as Parquet, each with a
    weight drawn uniformly from `weights` (seeded); returns the path as a string."""
    from east_ds.data.load import render_prompt

    rng = np.random.default_rng(0)
    rows = [dict(question_id=str(i), prompt=render_prompt(tok, f"What is {i} + {3 * i}?"),
                 response=f"{i} + {3 * i} = {4 * i}. \\boxed{{{4 * i}}}", weight=float(rng.uniform(*weights)))
            for i in range(count)]
    pd.DataFrame(rows).to_parquet(path)
    return str(path)
