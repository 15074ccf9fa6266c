"""Train from the command line, one process per rank, under the deepspeed launcher.

    deepspeed --num_gpus N -m east_ds.train --config CFG.yaml --examples X.parquet --model PATH --out DIR \
        [training.lr=1e-6 ...]

Reads the `training` and `model` sections of the run YAML (east_ds.config.load_config; overrides are dotted
`key=value`). For DPO/KTO, if the examples table lacks the reference columns, the frozen starting model scores
them first into DIR/examples_ref.parquet. Outputs: DIR/hf (save_pretrained), DIR/metrics.jsonl,
DIR/train_summary.json, and DIR/ds_checkpoint while training is unfinished (training.engine.fit). Re-running the same
command resumes from the last checkpoint, or returns at once when training finished.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="east_ds.train", description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=None, help="run YAML (sections training, model); omitted: defaults")
    ap.add_argument("--examples", required=True, help="examples.parquet (schema.EXAMPLE_COLUMNS of the loss)")
    ap.add_argument("--model", default=None, help="HF model path or hub name (default: model.path of the config)")
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--no-resume", action="store_true", help="ignore an existing DeepSpeed checkpoint in --out")
    ap.add_argument("--reference-only", action="store_true", help="only write DIR/examples_ref.parquet")
    ap.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. training.lr=1e-6")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    from east_ds.config import load_config
    from east_ds.schema import REFERENCE_COLUMNS
    from east_ds.tables import read_table
    from east_ds.training import engine as te
    cfg = load_config(args.config, args.overrides)
    tcfg, mcfg = cfg.training, cfg.model
    model = args.model or mcfg.path
    if not model:
        raise SystemExit("no model: pass --model or set model.path in the config")
    out = Path(args.out)
    rank, _ = te.init_distributed()
    try:
        examples = args.examples
        cols = REFERENCE_COLUMNS[tcfg.loss]
        if cols and (args.reference_only or not set(cols) <= set(read_table(examples).columns)):
            ref_path = out / "examples_ref.parquet"
            m = te.reference_logprobs(model, tcfg, mcfg, examples, str(ref_path))
            if rank == 0:
                print(json.dumps({"reference": m}, default=str))
            examples = str(ref_path)
        if not args.reference_only:
            summary = te.fit(model, tcfg, mcfg, examples, str(out), resume=not args.no_resume)
            if rank == 0:
                print(json.dumps({"train": summary}, default=str))
    finally:
        te.shutdown_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
