"""vLLM worker extension: weight loading inside vLLM's GPU workers (``collective_rpc`` targets).

vLLM mixes this class into its worker class when it is named in
``AsyncEngineArgs(worker_extension_cls="services.rollout.engines.vllm_worker.WeightLoaderExtension")``;
``await llm.collective_rpc("load_checkpoint", args=(path,))`` then runs on every worker (each
tensor-parallel rank loads its own shard through the model's ``load_weights``, which also maps
Hugging Face checkpoint names, legacy or current, to vLLM's).  Imports vLLM/torch only inside methods,
so this module is importable without vLLM.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable


class WeightLoaderExtension:
    """Methods added to vLLM's worker (``self`` is the worker: ``self.model_runner``, ``self.device``)."""

    def _model(self) -> Any:
        return self.model_runner.get_model()  # type: ignore[attr-defined]

    def load_tensors(self, named: Iterable[tuple[str, Any]]) -> int:
        """Load ``(hf_name, tensor)`` pairs (any device); returns how many were given."""
        device = getattr(self, "device", None)
        items = [(n, t.to(device) if device is not None else t) for n, t in named]
        self._model().load_weights(weights=items)
        return len(items)

    def load_checkpoint(self, path: str) -> int:
        """Load every tensor of the ``*.safetensors`` files in ``path``; returns how many."""
        from safetensors import safe_open

        files = sorted(Path(path).glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"checkpoint {path!r} holds no .safetensors file")
        count = 0

        def stream() -> Iterable[tuple[str, Any]]:
            nonlocal count
            for f in files:
                with safe_open(str(f), framework="pt", device="cpu") as fh:
                    for name in fh.keys():
                        count += 1
                        yield name, fh.get_tensor(name)

        self._model().load_weights(weights=stream())
        return count
