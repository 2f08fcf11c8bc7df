"""The `herbaria` command line as a whole: its areas, --help in workflow order, lazy imports, one-line errors.

The commands themselves are tested with their stages (test_ingest, test_search, test_agent, ...).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import pytest

from herbaria import cli
from herbaria.cli import main

REPO = Path(__file__).resolve().parent.parent
WORKFLOW = ["ingest", "index", "descriptions", "location", "search", "traits", "caption", "train-captioner", "ask", "serve",
            "demo", "finetune", "worker"]
AREA_OF = {"ingest": "collections", "index": "collections", "descriptions": "flora", "traits": "flora",
           "search": "search", "ask": "search", "caption": "captioning", "train-captioner": "captioning",
           "serve": "serving", "demo": "serving", "finetune": "finetuning",
           "worker": "worker", "location": "location"}
MODEL_LIBRARIES = {"torch", "torchvision", "open_clip", "faiss", "transformers", "sentence_transformers", "gradio",
                   "langchain", "langchain_core", "numpy", "pandas", "pyarrow", "bm25s", "accelerate"}


def test_help_lists_the_commands_in_workflow_order(capsys: pytest.CaptureFixture) -> None:
    assert main(["--help"]) == 0
    listed = re.findall(r"^    (\S+)", capsys.readouterr().out, flags=re.MULTILINE)
    assert listed == WORKFLOW


def test_each_command_is_registered_by_its_area_module() -> None:
    registered = {name: area.__name__.rsplit(".", 1)[1] for area in cli.AREAS for name in area.COMMANDS}
    assert registered == AREA_OF
    for area in cli.AREAS:  # an area alone registers its commands, in its own order
        sub = argparse.ArgumentParser(prog="herbaria").add_subparsers()
        area.register(sub)
        assert list(sub.choices) == list(area.COMMANDS)


def test_help_runs_as_a_module_without_loading_a_model_library() -> None:
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "herbaria", "--help"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.startswith("usage: herbaria"), done.stderr[-2000:]
    imported = {line.rsplit("|", 1)[1].strip().split(".")[0] for line in done.stderr.splitlines()
                if line.startswith("import time:") and "|" in line}
    assert "herbaria" in imported  # the log is the one we think it is
    assert not imported & MODEL_LIBRARIES


def test_misuse_exits_2_with_argparse_usage(capsys: pytest.CaptureFixture) -> None:
    assert main(["nope"]) == 2
    assert "invalid choice: 'nope'" in capsys.readouterr().err
    assert main(["search", "COL", "some", "text", "--bogus"]) == 2
    assert "unrecognized arguments: text --bogus" in capsys.readouterr().err


def test_a_failure_that_is_not_bad_input_exits_1_in_one_line_naming_its_type(tmp_path: Path,
                                                                             capsys: pytest.CaptureFixture) -> None:
    state = tmp_path / "state.json"
    state.write_text("{not json")
    # the state is read before the collection is opened, so this folder (no collection) is never looked at
    assert main(["ask", str(tmp_path), "only Rubiaceae", "--state", str(state)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("herbaria: JSONDecodeError: ") and err.count("\n") == 1
    assert state.read_text() == "{not json"


def test_demo_checks_its_settings_before_fetching_anything(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("HERBARIA_CACHE", str(tmp_path))
    assert main(["demo", "--per-client-queue", "-1"]) == 2
    err = capsys.readouterr().err
    assert err == ("herbaria: error: --per-client-queue ($HERBARIA_PER_CLIENT_QUEUE) must be 0 (no limit) or more, "
                   "not -1\n")
    assert not any(tmp_path.iterdir())
