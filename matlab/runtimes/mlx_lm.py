"""mlx-lm (Apple's MLX; its CPU build runs on Linux), in its own environment.

Measured (reports/runtimes.md): mlx-lm has only the multimodal Gemma 3n layout (it refuses
`gemma3n_text`), reads the legacy RoPE keys `rope_theta` / `rope_local_base_freq`, and
allocates k/v in every layer; in the layout `slice --runtime mlx-lm` writes, every slice kind
matches transformers.
"""

from matlab.runtimes.base import FLOAT_ONLY, REFUSES, Environment, Layout, Runtime

RUNTIME = Runtime(
    name="mlx-lm", package="mlx-lm", measured_version="0.32.2", measured=True,
    layout=Layout("mlx-lm (multimodal config, text weights)", text_weights_only=True, multimodal_text=True,
                  legacy_rope_keys=True, fill_consumer_kv=True),
    rules=(FLOAT_ONLY,),
    environment=Environment(requirements=("mlx[cpu]==0.32.4",), minutes=2),
    runner="mlx_lm_runner.py",
    reads_only=("mlx-lm", REFUSES, "mlx-lm has no gemma3n_text model (write the slice with `slice --runtime mlx-lm`)"),
)
