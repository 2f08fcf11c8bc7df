"""Threads per turn: cores // turns at once, for torch and FAISS alike."""

from __future__ import annotations

import faiss
import torch

from retrieval.vectors import set_threads_per_turn, threads_per_turn


def test_threads_split_the_cores_between_turns(monkeypatch):
    monkeypatch.delenv("HERBARIA_THREADS", raising=False)
    assert threads_per_turn(2, cores=2) == 1
    assert threads_per_turn(1, cores=16) == 16
    assert threads_per_turn(3, cores=16) == 5
    assert threads_per_turn(8, cores=2) == 1  # never zero
    assert threads_per_turn(0, cores=4) == 4  # a nonsense concurrency counts as one turn
    monkeypatch.setenv("HERBARIA_THREADS", "3")
    assert threads_per_turn(2, cores=2) == 3
    monkeypatch.setenv("HERBARIA_THREADS", "many")
    assert threads_per_turn(2, cores=8) == 4  # ignored with a warning


def test_setting_applies_to_torch_and_faiss(monkeypatch):
    torch_before, faiss_before = torch.get_num_threads(), faiss.omp_get_max_threads()
    monkeypatch.setenv("HERBARIA_THREADS", "1")
    try:
        assert set_threads_per_turn(2) == 1
        assert torch.get_num_threads() == 1 and faiss.omp_get_max_threads() == 1
    finally:
        torch.set_num_threads(torch_before)
        faiss.omp_set_num_threads(faiss_before)
