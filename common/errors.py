"""The root of the project's exceptions and one base per part.

Every exception class the project defines derives from ``RethinkerError`` through its part's base
below, so ``except RethinkerError`` catches any of our own errors and ``except <Part>Error`` those of
one part.  A concrete error also keeps the builtin it always was (``ConfigError`` is a
``ValueError``, ``EngineError`` a ``RuntimeError`` ...) by multiple inheritance, so
``except ValueError`` / ``except RuntimeError`` handlers catch it too:

    class ConfigError(CommonError, ValueError): ...

Private control-flow exceptions that never leave their module (``_Reject`` in
services/verifier/fastlatex.py, ``_Undecided`` in services/verifier/arith.py) stay plain local
classes; tests/common/test_errors.py checks the rest.
"""

from __future__ import annotations


class RethinkerError(Exception):
    """Root of every exception the project defines."""


class CommonError(RethinkerError):
    """Errors of the shared contracts in common/ (config, codec, data, model loading, weight transport, CLI usage)."""


class VerifierServiceError(RethinkerError):
    """Errors of the verifier (services/verifier/): its worker pool and its HTTP client."""


class BufferServiceError(RethinkerError):
    """Errors of the SSR buffer (services/buffer/)."""


class RolloutServiceError(RethinkerError):
    """Errors of the rollout servers (services/rollout/): engines, scoring, the HTTP client."""


class LearnerError(RethinkerError):
    """Errors of the learner (learner/)."""


class EvaluationError(RethinkerError):
    """Errors of the benchmark runner (evaluation/)."""


class LauncherError(RethinkerError):
    """Errors of the command line's process orchestration (rethinker/: launcher, supervisor, local Redis)."""
