"""mlx-vlm (MLX's vision-language models), in its own environment.

Measured (reports/runtimes.md): its KV-shared layers take the cache offset after their producer
advanced it, so every prompt longer than one token is computed with wrong positions: no slice
runs there. It loads Gemma 3n only with the vision tower's weights, and strictly (one width).
"""

from matlab.runtimes.base import (
    ANOTHER_MODEL,
    FLOAT_ONLY,
    MATRIX,
    REFUSES,
    Environment,
    Layout,
    Rule,
    Runtime,
    uniform_width,
)


def kv_shared_positions(plan) -> str | None:
    return ("its KV-shared layers take the cache offset after their producer advanced it, so every prompt longer "
            "than one token is computed with wrong positions (top-1 log-prob off by 1.3-1.7); no slice runs there, "
            "use mlx-lm (`slice --runtime mlx-lm`)")


RUNTIME = Runtime(
    name="mlx-vlm", package="mlx-vlm", measured_version="0.7.10", measured=True,
    layout=Layout("multimodal"),
    rules=(Rule("kv-shared-positions", kv_shared_positions, ANOTHER_MODEL, f"measured: {MATRIX}"),
           Rule("uniform-width", uniform_width, REFUSES, f"measured: {MATRIX} (strict load of its language model)"),
           FLOAT_ONLY),
    environment=Environment(requirements=("mlx[cpu]==0.32.4",), minutes=3),
    runner="mlx_vlm_runner.py",
    # measured: KeyError 'vision_tower.timm_model...'
    reads_only=("multimodal", REFUSES, "mlx-vlm loads Gemma 3n only with its vision tower's weights"),
)
