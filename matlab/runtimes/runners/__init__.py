"""Child programs that run one runtime on one model, each in that runtime's own environment.

They are started by file path with the runtime's interpreter (`matlab.runtimes.envs`), so
they import nothing from `matlab` and nothing but the runtime, numpy and the standard library.

Protocol (every runner):

    python RUNNER.py --model PATH --tokens TOKENS.json --out RESULT.json --top-k K

- TOKENS.json: {"tokens": [int, ...]}: token ids fed as they are (no tokenizer, no BOS added).
- The runner writes RESULT.json, always with "runtime" (its name) and "version" (the runtime
  package's version string), then one of:
  - success: "top": for every position t of the T tokens, the runtime's K most likely next
    tokens after tokens[0..t], as [[token_id, log_prob], ...] sorted by log_prob descending
    (log-softmax over the whole vocabulary, computed in float64 from the runtime's logits
    where the runtime gives logits), and exit 0;
  - a Python exception while loading: "stage": "load", "error": "ExceptionType: message"
    (the runtime's own message, one line), exit 3;
  - a Python exception while computing: "stage": "compute", "error": ..., exit 4.
- A runtime that aborts the process (a C assert, a signal) leaves no RESULT.json or one without
  "top"; the caller reads the exit status and the last lines of stderr.
"""
