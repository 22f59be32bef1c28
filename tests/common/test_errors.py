"""Every exception class the project defines derives from ``common.errors.RethinkerError`` through
its part's base, and keeps the builtin base its callers catch (ValueError, RuntimeError)."""

from __future__ import annotations

import ast
import builtins
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PARTS = ("common", "devtools", "weight_transport", "services", "learner", "evaluation", "rethinker")
# Private control flow, caught inside its own module (each says so in its docstring).
PRIVATE_CONTROL_FLOW = {"services/verifier/fastlatex.py:_Reject", "services/verifier/arith.py:_Undecided"}
PART_BASES = {"CommonError", "VerifierServiceError", "BufferServiceError", "RolloutServiceError", "LearnerError",
              "EvaluationError", "LauncherError"}


def _base_name(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return ""


def project_classes() -> dict[str, list[tuple[str, list[str]]]]:
    """class name -> [(where, base names)] for every class under the project's packages."""
    out: dict[str, list[tuple[str, list[str]]]] = {}
    for part in PARTS:
        for path in sorted((ROOT / part).rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.ClassDef):
                    where = f"{path.relative_to(ROOT).as_posix()}:{node.name}"
                    out.setdefault(node.name, []).append((where, [_base_name(b) for b in node.bases]))
    return out


def test_every_project_exception_derives_from_rethinker_error():
    classes = project_classes()

    def builtin_exception(name: str) -> bool:
        obj = getattr(builtins, name, None)
        return isinstance(obj, type) and issubclass(obj, BaseException)

    def is_exception(name: str, seen: frozenset[str] = frozenset()) -> bool:
        if builtin_exception(name) or name.endswith(("Error", "Exception")):
            return True
        return name not in seen and any(
            is_exception(b, seen | {name}) for _, bases in classes.get(name, []) for b in bases
        )

    def roots_in_rethinker_error(name: str, seen: frozenset[str] = frozenset()) -> bool:
        if name == "RethinkerError":
            return True
        return name not in seen and any(
            roots_in_rethinker_error(b, seen | {name}) for _, bases in classes.get(name, []) for b in bases
        )

    exceptions = [(where, name) for name, defs in classes.items() for where, _ in defs if is_exception(name)]
    assert len(exceptions) > 20  # the walk found the project's exceptions
    offenders = [where for where, name in exceptions
                 if where not in PRIVATE_CONTROL_FLOW and not roots_in_rethinker_error(name)]
    assert offenders == [], f"exception classes outside common.errors.RethinkerError: {offenders}"


def test_each_part_base_is_a_direct_child_of_the_root():
    import common.errors as errors

    for name in PART_BASES:
        assert getattr(errors, name).__bases__ == (errors.RethinkerError,), name


def test_errors_keep_the_builtin_their_callers_catch():
    from common.cli_args import UsageError
    from common.config import ConfigError
    from common.errors import BufferServiceError, CommonError, RethinkerError, RolloutServiceError
    from services.buffer.protocol import BadArgumentError, BufferCommandError, MalformedGroupError
    from services.rollout.client import RolloutClientError

    assert issubclass(ConfigError, CommonError) and issubclass(ConfigError, ValueError)
    assert issubclass(UsageError, CommonError) and not issubclass(UsageError, ValueError)
    assert issubclass(MalformedGroupError, BufferCommandError) and issubclass(MalformedGroupError, ValueError)
    assert issubclass(BadArgumentError, BufferServiceError) and issubclass(BadArgumentError, ValueError)
    assert issubclass(RolloutClientError, RolloutServiceError) and issubclass(RolloutClientError, RuntimeError)
    assert not issubclass(RethinkerError, (ValueError, RuntimeError))
