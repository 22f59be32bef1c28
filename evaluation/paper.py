"""The paper's headline accuracies (VL-Rethinker v1, spec section 8): the one place they are written.

``rethinker eval``'s markdown report sets the 7B figures beside ours (``REFERENCE_MODELS``).  Each
figure stands beside our registry's default variant of its benchmark: the settings spec section 7
names (MathVista testmini, MathVerse testmini, MathVision test, MMMU validation, EMMA all subjects)
and, for MMMU-Pro, whose single figure names no setting, standard (10 options).  Other variants have
no paper figure.  MEGA-Bench has no loader, so its figure is kept here but never shown.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Mapping

# accuracy in percent, by model, then by benchmark registry name
PAPER_ACCURACY: Mapping[str, Mapping[str, float]] = MappingProxyType(
    {
        "Qwen2.5-VL-7B": MappingProxyType(
            {"mathvista": 68.2, "mathverse": 46.3, "mathvision": 25.1, "mmmu_pro": 36.9, "mmmu": 54.3, "emma": 21.5, "mega_bench": 35.0}
        ),
        "VL-Rethinker-7B": MappingProxyType(
            {"mathvista": 74.9, "mathverse": 54.2, "mathvision": 32.3, "mmmu_pro": 41.7, "mmmu": 56.7, "emma": 29.7, "mega_bench": 37.2}
        ),
        "Qwen2.5-VL-72B": MappingProxyType(
            {"mathvista": 74.8, "mathverse": 57.2, "mathvision": 38.1, "mmmu_pro": 51.6, "mmmu": 70.2, "emma": 34.1, "mega_bench": 49.0}
        ),
        "VL-Rethinker-72B": MappingProxyType(
            {"mathvista": 80.3, "mathverse": 61.7, "mathvision": 43.9, "mmmu_pro": 53.9, "mmmu": 68.8, "emma": 38.9, "mega_bench": 51.3}
        ),
    }
)
REFERENCE_MODELS: tuple[str, ...] = ("Qwen2.5-VL-7B", "VL-Rethinker-7B")  # the report's reference columns


def paper_accuracy(model: str, bench_key: str) -> float | None:
    """The paper's accuracy (percent) of ``model`` on the benchmark run under ``bench_key``
    (``name`` or ``name:variant``); None for a variant or a benchmark the paper does not report."""
    if ":" in bench_key:
        return None
    return PAPER_ACCURACY[model].get(bench_key)
