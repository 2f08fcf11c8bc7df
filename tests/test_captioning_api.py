"""Captioning real herbarium sheets through the stage functions and the CLI, with the tiny configs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from herbaria.cli import main
from captioning.api import caption_image, train_captioner
from captioning.grounded import trait_key
from captioning.sources import MappingTexts
from retrieval.collections import Collection

# Short descriptions written for these tests (the shared floras do not cover the Harvard taxa).
DESCRIPTIONS = {
    "Anemone canadensis L.": "Herb, 20-80 cm. Leaves basal, palmately 3-5-lobed, margin toothed. Flowers solitary, "
                             "sepals 5, white.",
    "Geranium maculatum L.": "Herb, 30-60 cm. Leaves alternate, palmately 5-lobed, margin toothed. Flowers in cymes, "
                             "petals 5, pink.",
    "Geranium robertianum L.": "Herb, 10-50 cm. Leaves opposite, pinnately lobed, hairy. Flowers in pairs, petals 5, pink.",
    "Iris pseudacorus L.": "Herb, 40-150 cm. Leaves basal, linear, glabrous. Flowers yellow, tepals 6.",
    "Hemerocallis fulva (L.) L.": "Herb, 60-120 cm. Leaves basal, linear. Flowers orange, tepals 6.",
    "Impatiens capensis Meerb.": "Herb, 50-150 cm. Leaves alternate, ovate, margin toothed. Flowers orange, spurred.",
}


@pytest.fixture(scope="module")
def harvard(shared_data, tmp_path_factory) -> tuple[Path, Path]:
    from retrieval.vectors import build_index
    from retrieval.collections import ingest

    out = tmp_path_factory.mktemp("capcol") / "col"
    ingest(shared_data / "specimens" / "harvard", out, progress=False)
    build_index(out, model="tiny-test", progress=False)
    return out, shared_data / "specimens" / "harvard" / "Geranium_maculatum.27912.2054.jpg"


@pytest.fixture(scope="module")
def described(harvard, tmp_path_factory) -> tuple[Path, Path]:
    """The same sheets in a second collection whose descriptions went in through `herbaria descriptions add`."""
    import shutil

    col, sheet = harvard
    copy = tmp_path_factory.mktemp("capdesc") / "col"
    shutil.copytree(col, copy)
    source = copy.parent / "descriptions.csv"
    with source.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["taxon", "text"])
        writer.writerows(DESCRIPTIONS.items())
    assert main(["descriptions", "add", str(copy), str(source), "--text-model", "tiny-test", "--quiet"]) == 0
    return copy, sheet


def test_grounded_caption_of_a_real_sheet(harvard):
    col, sheet = harvard
    assert sheet.exists()
    result = caption_image(col, sheet, k=8, descriptions=DESCRIPTIONS)
    json.dumps(result)  # plain data for the CLI, the chat and the web demo
    assert result["captioner"] == "grounded" and result["k"] == 8 and len(result["neighbours"]) == 8
    top = result["neighbours"][0]
    assert top["name"] == "Geranium maculatum" and top["score"] > 0.999  # the sheet itself is in the collection
    texts = MappingTexts(DESCRIPTIONS)
    carried: dict[tuple, set[int]] = {}
    for nb in result["neighbours"]:
        taxon = texts.get(nb["name"] or "")
        for t in taxon["traits"] if taxon else []:
            key = trait_key(t)
            if t.get("min_mm") is not None or t.get("max_mm") is not None:  # sizes are merged into one range
                key = (key[0], key[1], "size", key[3])
            carried.setdefault(key, set()).add(nb["specimen_id"])
    stated = [(o["organ"], t) for o in result["organs"] for t in o["traits"]]
    assert stated, result["text"]
    for organ, t in stated:
        key = (organ, t["character"], t["value"].lower(), t["negated"])
        key = key if key in carried else (organ, t["character"], "size", t["negated"])
        assert key in carried and set(t["specimens"]) == carried[key] and t["count"] == len(carried[key])
        assert f"{t['count']}/8" in result["text"]
    assert any(t["name"] == "Geranium maculatum" for t in result["taxa"])


def test_cli_caption_reads_the_collections_descriptions(described, capsys):
    col, sheet = described
    assert main(["caption", str(col), str(sheet), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["described_neighbours"] == sum(1 for n in result["neighbours"] if n["name"] in
                                                 {"Geranium maculatum", "Geranium robertianum", "Anemone canadensis",
                                                  "Iris pseudacorus", "Hemerocallis fulva", "Impatiens capensis"})
    assert result["organs"] and "most similar specimens" in result["text"]
    assert main(["caption", str(col), str(sheet)]) == 0
    out = capsys.readouterr().out
    assert out.strip() == result["text"] and f"Candidate taxa: {result['taxa'][0]['name']} (" in out  # once


def test_cli_caption_with_the_tiny_decoder(harvard, capsys):
    col, sheet = harvard
    assert main(["caption", str(col), str(sheet), "--captioner", "tiny-test", "--max-tokens", "12", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["captioner"] == "tiny-test" and result["kind"] == "decoder" and result["text"]
    assert result["trained"] is False and "untrained" in result["warning"]
    assert len(result["neighbours"]) == 8 and result["encoder"] == "tiny-test"
    assert main(["caption", str(col), str(sheet), "--captioner", "coca-tiny-test", "--max-tokens", "6", "--json"]) == 0
    coca = json.loads(capsys.readouterr().out)
    assert coca["kind"] == "coca" and coca["tokens"] <= 6 and "untrained" in coca["warning"]
    assert main(["caption", str(col), str(sheet), "--k", "3"]) == 0
    out = capsys.readouterr()
    assert "Candidate taxa:" in out.out and "3 neighbours" in out.err


@pytest.mark.parametrize("argv, message", [
    (["caption", "{col}", "{missing}"], "image file not found"),
    (["caption", "{col}", "{sheet}", "--captioner", "nope"], "unknown captioner 'nope'"),
    (["caption", "{col}", "{sheet}", "--k", "0"], "k must be at least 1"),
    (["caption", "{col}", "{sheet}", "--captioner", "trained"], "no trained captioner"),
    (["caption", "{col}", "{sheet}", "--captioner", "local-dir:/nonexistent"], "no captioner checkpoint"),
])
def test_cli_errors_are_one_clear_line(harvard, capsys, tmp_path, argv, message):
    col, sheet = harvard
    if "trained" in argv and (Path(col) / "captioner" / "model" / "captioner.json").exists():
        pytest.skip("a trained captioner exists already (test order)")
    args = [a.format(col=col, sheet=sheet, missing=tmp_path / "none.jpg") for a in argv]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_train_then_caption_with_the_trained_decoder(described, capsys):
    col, sheet = described
    assert main(["train-captioner", str(col), "--captioner", "tiny-test", "--k", "4", "--epochs", "2",
                 "--val-fraction", "0.2", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["taxa"] == 6 and report["pairs"] == 30 and report["val_pairs"] == 6
    assert report["finished"] and report["organs"] == ["plant", "leaf", "flower"]
    assert report["retrieval_k"] == 4 and report["encoder"] == "tiny-test"
    for who in ("decoder", "grounded"):
        assert {"bleu4", "rouge_l", "trait_f1"} <= set(report["validation"][who])
    out = Path(col) / "captioner"
    assert json.loads((out / "report.json").read_text())["steps"] == report["steps"]
    meta = json.loads((out / "model" / "captioner.json").read_text())
    assert meta["trained"] and meta["validation"]["decoder"]["n"] == 6
    assert main(["caption", str(col), str(sheet), "--captioner", "trained", "--max-tokens", "8", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["trained"] is True and "warning" not in result
    assert set(result["sections"]) == {"plant", "leaf", "flower"} and result["described_neighbours"] > 0
    # a second run resumes from the finished checkpoint: nothing left to do at the same epoch count
    again = train_captioner(col, captioner="tiny-test", k=4, epochs=2, val_fraction=0.2, progress=False)
    assert again["steps"] == report["steps"]


def test_training_needs_descriptions(harvard):
    col, _ = harvard
    with pytest.raises(Exception, match="no taxon descriptions"):
        train_captioner(Collection.open(col), captioner="tiny-test", descriptions={}, progress=False)


def test_one_image_pass_serves_retrieval_and_the_decoder(harvard, monkeypatch):
    from captioning.api import CaptionService

    col, sheet = harvard
    service = CaptionService(col, captioner="tiny-test")
    calls = []
    original = service.encoder.image_features
    monkeypatch.setattr(service.encoder, "image_features", lambda pixels: calls.append(1) or original(pixels))
    result = service.caption(sheet, k=4)
    assert calls == [1] and len(result["neighbours"]) == 4 and result["encoder"] == "tiny-test"
