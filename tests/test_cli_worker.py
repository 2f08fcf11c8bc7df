"""`herbaria worker`: forwarded commands print exactly what they print in-process; no worker, no change."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from herbaria.cli import main
from herbaria.cli import worker


@pytest.fixture()
def socket_file(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = Path(tmp_path_factory.mktemp("w", numbered=True)) / "private" / "worker.sock"  # AF_UNIX paths are short
    monkeypatch.setenv(worker.SOCKET_ENV, str(path))
    monkeypatch.delenv(worker.OFF_ENV, raising=False)
    return path


def _start(path: Path, calls: int) -> threading.Thread:
    thread = threading.Thread(target=worker.serve, args=(path,), kwargs={"max_calls": calls}, daemon=True)
    thread.start()
    for _ in range(200):
        if path.exists():
            break
        threading.Event().wait(0.01)
    return thread


def test_forwarded_commands_print_what_they_print_in_process(socket_file: Path, capsys: pytest.CaptureFixture[str],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    argv = ["traits", "Leaves opposite, ovate, 3-5 cm long; margin serrate.", "--json"]
    assert main(argv) == 0  # no worker: runs here
    alone = capsys.readouterr().out
    served: list[list[str]] = []
    original = worker.handle
    monkeypatch.setattr(worker, "handle", lambda request: served.append(request["argv"]) or original(request))
    thread = _start(socket_file, calls=2)
    assert stat.S_IMODE(os.stat(socket_file.parent).st_mode) == 0o700
    assert main(argv) == 0
    assert capsys.readouterr().out == alone and served == [argv]
    assert main(["traits", ""]) == 2  # its errors and exit codes come back as they are
    assert "give some description text" in capsys.readouterr().err
    thread.join(5)
    assert not thread.is_alive() and not socket_file.exists()


def test_a_stale_socket_or_another_command_runs_in_process(socket_file: Path) -> None:
    socket_file.parent.mkdir(mode=0o700)
    socket_file.write_text("")  # left by a worker that died
    assert worker.forward(["traits", "Leaves opposite."]) is None
    assert worker.forward(["ingest", "x", "--out", "y"]) is None
    assert worker.handle({"argv": ["ingest", "x", "--out", "y"]})["rc"] == 2
