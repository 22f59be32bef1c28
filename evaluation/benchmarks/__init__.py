"""The benchmark registry: names, variants and how ``--bench`` arguments select them.

A benchmark argument is ``NAME[:VARIANT][=PATH]``:

- ``mathvista`` -- the default variant, read from ``DATA_DIR/<its folder>`` (see each module);
- ``mmmu_pro:vision`` -- another variant (``rethinker eval --list`` prints them);
- ``virl=.cache/data/synth/eval.parquet`` -- an explicit folder or table file instead of DATA_DIR.

Names are case-insensitive and ``-`` equals ``_``; ``synthetic`` is an alias of ``virl``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from evaluation.benchmarks import emma, mathverse, mathvision, mathvista, mmmu, mmmu_pro, virl
from evaluation.benchmarks.base import BenchmarkError, BenchmarkSpec, EvalItem, dedupe_ids, locate

REGISTRY: dict[str, BenchmarkSpec] = {
    s.name: s for s in (mathvista.SPEC, mathverse.SPEC, mathvision.SPEC, mmmu_pro.SPEC, mmmu.SPEC, emma.SPEC, virl.SPEC)
}
ALIASES = {"synthetic": "virl", "virl39k": "virl", "mmmupro": "mmmu_pro", "math_vision": "mathvision", "math_verse": "mathverse", "mmmu_val": "mmmu"}

__all__ = ["BenchRef", "BenchmarkError", "EvalItem", "REGISTRY", "parse_bench", "load_benchmark"]


@dataclass(frozen=True, slots=True)
class BenchRef:
    name: str  # registry name
    variant: str | None  # None: the default variant
    path: Path | None = None  # explicit data location (overrides DATA_DIR)

    @property
    def key(self) -> str:
        """Display name and results-file stem: ``name`` or ``name:variant`` for a non-default variant."""
        spec = REGISTRY[self.name]
        if self.variant is None or self.variant == spec.default_variant:
            return self.name
        return f"{self.name}:{self.variant}"


def parse_bench(arg: str) -> BenchRef:
    """``NAME[:VARIANT][=PATH]`` -> BenchRef; BenchmarkError names the bad part."""
    text = arg.strip()
    path = None
    if "=" in text:
        text, _, p = text.partition("=")
        if not p.strip():
            raise BenchmarkError(f"--bench {arg!r}: empty path after '='")
        path = Path(p.strip()).expanduser()
    name, _, variant = text.partition(":")
    key = name.strip().lower().replace("-", "_")
    key = ALIASES.get(key, key)
    if key not in REGISTRY:
        raise BenchmarkError(f"--bench {arg!r}: unknown benchmark {name!r}; known: {', '.join(REGISTRY)} (alias synthetic)")
    spec = REGISTRY[key]
    v = variant.strip().lower() or None
    if v is not None and v not in spec.variants:
        raise BenchmarkError(f"--bench {arg!r}: unknown variant {variant!r} of {key}; known: {', '.join(spec.variants)}")
    return BenchRef(key, v, path)


def load_benchmark(ref: BenchRef | str, data_dir: str | Path | None = None, *, max_items: int | None = None) -> list[EvalItem]:
    """The items of one benchmark (first ``max_items`` in file order when given)."""
    if isinstance(ref, str):
        ref = parse_bench(ref)
    spec = REGISTRY[ref.name]
    if ref.path is not None:
        if not ref.path.exists():
            raise BenchmarkError(f"{ref.key}: {str(ref.path)!r} does not exist")
        root = ref.path
    else:
        if data_dir is None:
            raise BenchmarkError(f"{ref.key}: no --data-dir and no explicit path ({ref.name}=PATH)")
        root = locate(Path(data_dir), spec.dir_names)
    items = spec.load(root, ref.variant or spec.default_variant)
    for it in items:
        it.benchmark = ref.key
    items = dedupe_ids(items)
    if max_items is not None:
        items = items[: max(0, max_items)]
    return items
