"""Data: questions in, prompts and gold answers out (EAST step 0).

Reads GSM8K / MATH rows from a local JSONL or Parquet file or a hub dataset; writes the data files the shipped
configs read (`east-ds data`). Gold answers are parsed with east_ds.grading when the questions load, so a row
whose gold cannot be graded fails at once, named by file and row.

    load       load_dataset (question_id, question, gold), load_raw, render_prompt, check_model_path,
               SYSTEM_PROMPT, FALLBACK_TEMPLATE
    prep       `east-ds data gsm8k|math|math500`: SPECS, parsable_rows
    synthetic  the demo's arithmetic task: make_problems, to_gsm8k_rows, make_mixed_problems
    tiny       tiny Llama-shaped models and tokenizers built on the fly (demo, smoke check, tests): build_tiny_model

Pure Python, pandas and transformers' tokenizers; no Ray, vLLM or DeepSpeed.
"""
