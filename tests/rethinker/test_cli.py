"""The `rethinker` console command: real subprocesses, exit codes and readable errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rethinker.cli", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, **(env or {})},
    )


def test_version():
    r = run("version")
    assert r.returncode == 0 and r.stdout.startswith("rethinker ")


def test_config_show_applies_overrides():
    r = run("config", "show", "-c", "configs/tiny-cpu.yaml", "--set", "learner.lr=0.5",
            env={"RETHINKER__ROLLOUT__PORT": "9999"})
    assert r.returncode == 0, r.stderr
    shown = yaml.safe_load(r.stdout)
    assert shown["learner"]["lr"] == 0.5 and shown["rollout"]["port"] == 9999
    assert shown["model"]["path"] == ".cache/models/tiny-seed0"


def test_config_error_is_one_readable_line_per_problem():
    r = run("config", "show", "--set", "learner.zero_stage=9", "--set", "verifier.port=-1")
    assert r.returncode == 2
    assert "rethinker: error: invalid configuration" in r.stderr
    assert "learner.zero_stage" in r.stderr and "(got 9)" in r.stderr
    assert "Traceback" not in r.stderr


def test_missing_config_file():
    r = run("config", "show", "-c", "nope.yaml")
    assert r.returncode == 2 and "nope.yaml" in r.stderr and "does not exist" in r.stderr


def test_unknown_command_is_a_usage_error():
    r = run("frobnicate")
    assert r.returncode == 2 and "invalid choice" in r.stderr


def test_build_parser_again_after_the_last_one_was_collected():
    """Parsers built one after the other in one process (as the deploy checks do) never share their
    `serve` group, even when a new subparsers object gets the address of a collected one."""
    import gc

    from rethinker.cli import build_parser

    for _ in range(50):
        parser = build_parser()
        assert parser.parse_args(["serve", "verifier"]).service == "verifier"
        del parser
        gc.collect()


def test_nothing_below_the_cli_imports_the_rethinker_package():
    """common/, services/, learner/ and evaluation/ take their command-line helpers from
    common/cli_args.py; only the rethinker package (the CLI, launcher, demo) imports rethinker."""
    import ast

    offenders = []
    for part in ("common", "services", "learner", "evaluation"):
        for path in sorted((ROOT / part).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                offenders += [f"{path.relative_to(ROOT)}:{node.lineno} {n}" for n in names
                              if n == "rethinker" or n.startswith("rethinker.")]
    assert offenders == []


def test_each_process_entry_module_runs_standalone_with_the_shared_config_args():
    """`python -m <part>.main --help` shows the same --config/--set as `rethinker serve ...`."""
    for module in ("services.verifier.main", "services.buffer.main", "services.rollout.main", "learner.main"):
        r = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, (module, r.stderr)
        assert "--config" in r.stdout and "--set SECTION.FIELD=VALUE" in r.stdout, (module, r.stdout)
