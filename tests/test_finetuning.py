"""Fine-tuning the retriever: pairs, near-taxa batches, losses, momentum, both objectives, resume, export.

Everything runs on the tiny random-weight encoder and decoder, on a small collection of
synthetic sheets (a colour and a band whose place says the taxon) built through ingest and
`descriptions add`, as users build theirs.
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from herbaria.cli import main
from finetuning import finetune
from finetuning.batching import multi_positive_targets, near_taxa_batches
from finetuning.losses import compose, contrastive_loss, momentum_contrastive_loss, soft_cross_entropy
from finetuning.momentum import FeatureQueue, ema_update, momentum_copy
from finetuning.pairs import Specimen, Taxon, collect_pairs, sample_text
from finetuning.trainable import add_lora, freeze, merge_lora, parameter_groups
from retrieval.errors import BadInput, IndexMismatch
from retrieval.vectors import create_encoder, weights_fingerprint

TAXA = {"Rosa canina": "Rosaceae", "Rosa rugosa": "Rosaceae", "Rubus idaeus": "Rosaceae",
        "Geranium maculatum": "Geraniaceae", "Geranium robertianum": "Geraniaceae",
        "Iris pseudacorus": "Iridaceae", "Iris versicolor": "Iridaceae", "Viola odorata": "Violaceae"}
FLORA_A = {
    "Rosa canina": "Shrub, 1-3 m. Stems with curved prickles. Leaves alternate, pinnate, leaflets 5-7, margin serrate. "
                   "Flowers pink, petals 5.",
    "Rosa rugosa": "Shrub, 1-2 m. Stems densely prickly and hairy. Leaves alternate, pinnate, leaflets rugose. "
                   "Flowers purple, petals 5.",
    "Rubus idaeus": "Shrub. Stems with slender prickles. Leaves alternate, pinnate, leaflets 3-5, white beneath. "
                    "Flowers white, petals 5.",
    "Geranium maculatum": "Herb, 30-60 cm. Leaves alternate, palmately 5-lobed, margin toothed. Flowers in cymes, "
                          "petals 5, pink.",
    "Geranium robertianum": "Herb, 10-50 cm. Leaves opposite, pinnately lobed, hairy. Flowers in pairs, petals 5, pink.",
    "Iris pseudacorus": "Herb, 40-150 cm. Leaves basal, linear, glabrous. Flowers yellow, tepals 6.",
}
FLORA_B = {"Rosa canina": "Leaves glabrous, leaflets ovate. Sepals reflexed after flowering. Fruit red, ovoid."}
TINY = {"model": "tiny-test", "batch_size": 8, "progress": False}


def _sheets(folder: Path, taxa: dict[str, str], per_taxon: int = 4) -> Path:
    folder.mkdir(parents=True)
    rows = []
    for t, (name, family) in enumerate(taxa.items()):
        colour = np.random.default_rng(t).integers(40, 220, 3)
        for j in range(per_taxon):
            pixels = np.clip(colour + np.random.default_rng(100 * t + j).normal(0, 25, (128, 96, 3)), 0, 255)
            pixels[10 + 8 * t:30 + 8 * t] = 255 - colour  # a band whose place says the taxon
            name_ = f"{name.replace(' ', '_')}_{j}.jpg"
            Image.fromarray(pixels.astype("uint8")).save(folder / name_, quality=90)
            rows.append([name_, name, family])
    with open(folder / "labels.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file", "scientificName", "family"])
        writer.writerows(rows)
    return folder


@pytest.fixture(scope="module")
def collection(tmp_path_factory) -> Path:
    from retrieval.collections import ingest
    from retrieval.flora import add_descriptions

    root = tmp_path_factory.mktemp("finetune")
    col = root / "col"
    ingest(_sheets(root / "sheets", TAXA), col, progress=False)
    sources = []
    for i, flora in enumerate((FLORA_A, FLORA_B)):
        sources.append(root / f"flora{i}.csv")
        with sources[-1].open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["taxon", "text", "source"])
            writer.writerows([name, text, f"flora{i}"] for name, text in flora.items())
    add_descriptions(col, sources, text_model="tiny-test", progress=False)
    return col


# --------------------------------------------------------------------------- pairs


def test_sheets_are_paired_with_name_templates_organ_sentences_and_trait_phrases(collection):
    pairs = collect_pairs(collection, heldout_taxa=0, heldout_specimens=0)
    assert [t.key for t in pairs.taxa] == sorted(TAXA) and len(pairs.specimens) == 32 and len(pairs.train) == 32
    rosa = next(t for t in pairs.taxa if t.key == "Rosa canina")
    assert rosa.genus == "Rosa" and rosa.family == "Rosaceae" and len(rosa.sentences) == 2  # two floras linked
    rng = random.Random(0)
    drawn = [sample_text(rosa, rng) for _ in range(300)]
    kinds = {k for k, _ in drawn}
    assert kinds == {"name", "sentence", "traits"}
    sentences = {text for k, text in drawn if k == "sentence"}
    assert "Fruit red, ovoid." in sentences and "Flowers pink, petals 5." in sentences  # both descriptions sampled
    assert all(s in FLORA_A["Rosa canina"] + " " + FLORA_B["Rosa canina"] for s in sentences)
    assert "herbarium sheet of Rosa canina, Rosaceae" in {text for k, text in drawn if k == "name"}
    phrases = {p for k, text in drawn if k == "traits" for p in text.split(", ")}
    assert {"leaf alternate", "flower pink", "shrub"} <= phrases
    viola = next(t for t in pairs.taxa if t.key == "Viola odorata")
    assert not viola.described and {sample_text(viola, rng)[0] for _ in range(20)} == {"name"}
    assert next(t for t in pairs.taxa if t.key == "Geranium robertianum").query().startswith("herb, leaf opposite")


def test_held_out_splits_are_disjoint_and_held_out_taxa_never_trained(collection):
    pairs = collect_pairs(collection, heldout_taxa=0.25, heldout_specimens=0.2, seed=3)
    train, sheets, taxa = set(pairs.train), set(pairs.heldout_specimens), set(pairs.heldout_taxa)
    assert not (train & sheets or train & taxa or sheets & taxa) and len(train | sheets | taxa) == 32
    assert len(pairs.taxa_of(pairs.heldout_taxa)) == 2
    trained_taxa = set(pairs.taxa_of(pairs.train))
    assert trained_taxa.isdisjoint(pairs.taxa_of(pairs.heldout_taxa))
    assert set(pairs.taxa_of(pairs.heldout_specimens)) <= trained_taxa and len(sheets) == 5
    again = collect_pairs(collection, heldout_taxa=0.25, heldout_specimens=0.2, seed=3)
    assert again.heldout_specimens == pairs.heldout_specimens and again.heldout_taxa == pairs.heldout_taxa


# --------------------------------------------------------------------------- batches and losses


def test_batches_mix_congeners_and_hold_every_sheet_once():
    taxa = [Taxon("Rosa a", "Rosa", "Rosaceae"), Taxon("Rosa b", "Rosa", "Rosaceae"),
            Taxon("Iris c", "Iris", "Iridaceae"), Taxon("Iris d", "Iris", "Iridaceae")]
    specimens = [Specimen(i, Path(f"{i}.jpg"), i % 4) for i in range(16)]
    for seed in range(5):
        batches = near_taxa_batches(specimens, range(16), taxa, batch_size=4, per_taxon=2, rng=random.Random(seed))
        assert sorted(i for b in batches for i in b) == list(range(16))
        for batch in batches:  # two sheets of a taxon, then two of its congener
            assert len(batch) == 4 and len({taxa[specimens[i].taxon].genus for i in batch}) == 1
            assert len({specimens[i].taxon for i in batch}) == 2


def test_a_taxon_is_a_positive_of_its_own_sheets_not_a_negative():
    taxa = torch.tensor([0, 0, 1])
    targets = multi_positive_targets(taxa, taxa)
    assert torch.equal(targets, torch.tensor([[0.5, 0.5, 0], [0.5, 0.5, 0], [0, 0, 1.0]]))
    image = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]]), dim=-1)
    text = torch.nn.functional.normalize(torch.tensor([[0.8, 0.2], [1.0, 0.0], [0.1, 1.0]]), dim=-1)
    scale = torch.tensor(10.0)
    logits = scale * image @ text.t()
    by_hand = -(targets * logits.log_softmax(-1)).sum(-1).mean()
    loss = contrastive_loss(image, text, taxa, scale)
    assert loss["i2t"].item() == pytest.approx(by_hand.item(), rel=1e-6)
    distinct = contrastive_loss(image, text, torch.tensor([0, 1, 2]), scale)  # the same pairs with taxa all distinct
    assert loss["itc"] < distinct["itc"]  # a sheet close to its taxon's other text is not punished for it


def test_loss_composes_as_documented():
    gen = torch.Generator().manual_seed(0)
    unit = lambda *s: torch.nn.functional.normalize(torch.randn(*s, generator=gen), dim=-1)
    image, text, m_image, m_text = unit(4, 8), unit(4, 8), unit(4, 8), unit(4, 8)
    q_image, q_text = unit(6, 8), unit(6, 8)
    taxa, q_taxa, scale, alpha = torch.tensor([0, 0, 1, 2]), torch.tensor([1, 3, 3, 0, 2, 4]), torch.tensor(7.0), 0.4
    parts = momentum_contrastive_loss(image, text, taxa, scale, m_image=m_image, m_text=m_text, queue_image=q_image,
                                      queue_text=q_text, queue_taxa=q_taxa, alpha=alpha)
    keys_t, keys_i, key_taxa = torch.cat([m_text, q_text]), torch.cat([m_image, q_image]), torch.cat([taxa, q_taxa])
    hard = multi_positive_targets(taxa, key_taxa)
    soft_i2t = (scale * m_image @ keys_t.t()).softmax(-1)
    soft_t2i = (scale * m_text @ keys_i.t()).softmax(-1)
    i2t = soft_cross_entropy(scale * image @ keys_t.t(), (1 - alpha) * hard + alpha * soft_i2t)
    t2i = soft_cross_entropy(scale * text @ keys_i.t(), (1 - alpha) * hard + alpha * soft_t2i)
    assert parts["itc"].item() == pytest.approx(((i2t + t2i) / 2).item(), rel=1e-5)
    assert parts["itc"].item() == pytest.approx(((1 - alpha) * parts["itc_hard"] + alpha * parts["itc_soft"]).item(),
                                                rel=1e-5)
    parts["caption"] = torch.tensor(2.5)
    total = compose(parts, {"itc": 0.7, "caption": 0.3})
    assert total.item() == pytest.approx(0.7 * parts["itc"].item() + 0.3 * 2.5, rel=1e-6)
    no_distillation = momentum_contrastive_loss(image, text, taxa, scale, m_image=m_image, m_text=m_text,
                                                queue_image=q_image, queue_text=q_text, queue_taxa=q_taxa, alpha=0.0)
    assert no_distillation["itc"].item() == pytest.approx(parts["itc_hard"].item(), rel=1e-5)


# --------------------------------------------------------------------------- momentum


def test_ema_update_moves_the_teacher_a_fixed_share_towards_the_student():
    student = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.LayerNorm(2))
    teacher = momentum_copy(student)
    assert all(not p.requires_grad for p in teacher.parameters())
    before = [p.detach().clone() for p in teacher.parameters()]
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    ema_update(teacher, student, 0.9)
    for t, s, b in zip(teacher.parameters(), student.parameters(), before):
        assert torch.allclose(t, 0.9 * b + 0.1 * s)
    ema_update(teacher, student, 0.0)
    assert all(torch.equal(t, s) for t, s in zip(teacher.parameters(), student.parameters()))


def test_queue_is_first_in_first_out():
    queue = FeatureQueue(5, 2)
    assert len(queue) == 0 and queue.contents()[2].numel() == 0
    for start in (0, 3, 6):  # pushes of 3 rows: 0-2, 3-5, 6-8
        rows = torch.arange(start, start + 3, dtype=torch.float)
        queue.push(rows[:, None].repeat(1, 2), -rows[:, None].repeat(1, 2), rows.long())
    image, text, taxa = queue.contents()
    assert taxa.tolist() == [4, 5, 6, 7, 8] and image[:, 0].tolist() == [4, 5, 6, 7, 8]  # oldest gone, oldest first
    assert text[:, 1].tolist() == [-4, -5, -6, -7, -8]
    queue.push(torch.zeros(7, 2), torch.zeros(7, 2), torch.arange(10, 17))  # more than fits: only the newest stay
    assert queue.contents()[2].tolist() == [12, 13, 14, 15, 16]
    restored = FeatureQueue(5, 2)
    restored.load_state_dict(queue.state_dict())  # a checkpoint keeps the queue
    assert restored.contents()[2].tolist() == [12, 13, 14, 15, 16]


# --------------------------------------------------------------------------- what trains


def _tiny_clip():
    import copy

    return copy.deepcopy(create_encoder("tiny-test", device="cpu", precision="fp32").model).float()


def test_weight_decay_skips_norms_biases_embeddings_and_temperature():
    clip = _tiny_clip()
    decay, plain = parameter_groups(clip, 0.1)
    names = {id(p): n for n, p in clip.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    kept = {names[id(p)] for p in plain["params"]}
    assert decay["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert "visual.transformer.resblocks.0.mlp.c_fc.weight" in decayed and "visual.proj" in decayed
    for name in ("logit_scale", "visual.ln_post.weight", "visual.transformer.resblocks.0.mlp.c_fc.bias",
                 "positional_embedding", "visual.class_embedding", "token_embedding.weight"):
        assert name in kept, name


def test_freeze_by_block_lit_and_fixed_temperature():
    clip = _tiny_clip()
    resolved = freeze(clip, image_blocks=0, text_blocks=2, pretrained=True, temperature=0.05)
    trainable = {n for n, p in clip.named_parameters() if p.requires_grad}
    assert resolved == {"image_blocks": 0, "text_blocks": 2}
    assert not any(n.startswith("visual.") for n in trainable)  # LiT: the image tower is locked
    assert "text_projection" in trainable and any(n.startswith("transformer.resblocks.1.") for n in trainable)
    assert not any(n.startswith("transformer.resblocks.0.") for n in trainable) and "token_embedding.weight" not in trainable
    assert "logit_scale" not in trainable and clip.logit_scale.exp().item() == pytest.approx(20.0)
    scratch = _tiny_clip()
    assert freeze(scratch, image_blocks="auto", text_blocks="auto", pretrained=False, temperature="learned") == \
        {"image_blocks": "all", "text_blocks": "all"}
    assert all(p.requires_grad for p in scratch.parameters())


def test_lora_adapters_train_alone_and_merge_into_plain_weights():
    pytest.importorskip("peft", reason="LoRA needs the optional peft package")
    clip = _tiny_clip()
    plain_keys = set(clip.state_dict())
    peft_model = add_lora(clip, 4)
    trainable = [n for n, p in clip.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or n.endswith("logit_scale") for n in trainable)
    with torch.no_grad():
        for n, p in clip.named_parameters():
            if "lora_B" in n:
                p.fill_(0.01)  # adapters that changed something
    merged = merge_lora(peft_model)
    assert set(merged.state_dict()) == plain_keys
    assert weights_fingerprint(merged) != weights_fingerprint(_tiny_clip())


# --------------------------------------------------------------------------- training runs


def test_contrastive_run_learns_exports_and_an_old_index_is_refused(collection, tmp_path, capsys):
    from retrieval.vectors import SpecimenIndex
    from retrieval.vectors import build_index

    build_index(collection, model="tiny-test", progress=False, rebuild=True)
    out = tmp_path / "ft"
    code = main(["finetune", str(collection), "--model", "tiny-test", "--out", str(out), "--epochs", "6",
                 "--batch-size", "8", "--heldout-taxa", "0.25", "--heldout-specimens", "0.2", "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["finished"] and report["steps"] == report["total_steps"] > 6
    assert report["loss_last"] < report["loss_first"], report["history"]
    assert report["encoder"] == f"local-dir:{out.resolve()}" and report["captioner"] is None
    for split in ("heldout_specimens", "heldout_taxa"):
        for when in ("before", "after"):
            scores = report[when][split]
            assert scores["n"] > 0 and 0 <= scores["image_to_description"]["R@1"] <= 1
        assert report["after"][split]["chance"]["R@1"] == pytest.approx(1 / report["after"][split]["taxa"], abs=1e-4)
    assert report["after"]["heldout_specimens"]["taxa"] == 8 and report["after"]["heldout_taxa"]["taxa"] == 2
    card = (out / "README.md").read_text()
    assert "library_name: open_clip" in card and "base_model: herbaria-tiny-test" in card and "`contrastive`" in card
    assert "| heldout specimens (n=5, 8 taxa) | image to description R@1 |" in card
    assert json.loads((out / "metrics.json").read_text())["after"] == report["after"]
    encoder = create_encoder(report["encoder"], device="cpu")  # through the encoder registry, as `index --model` does
    assert encoder.fingerprint == report["fingerprint"] != create_encoder("tiny-test", device="cpu").fingerprint
    assert np.isfinite(encoder.encode_texts(["leaf opposite"])).all()
    with pytest.raises(IndexMismatch, match="rebuild"):  # the index built with the old encoder is refused
        build_index(collection, model=report["encoder"], progress=False)
    with pytest.raises(IndexMismatch):
        SpecimenIndex.load(collection / "index", encoder=encoder.info)
    rebuilt = build_index(collection, model=report["encoder"], rebuild=True, progress=False)
    assert rebuilt["fingerprint"] == report["fingerprint"] and rebuilt["total"] == 32
    with pytest.raises(IndexMismatch):
        SpecimenIndex.load(collection / "index", encoder=create_encoder("tiny-test", device="cpu").info)


def test_multitask_run_trains_both_heads_and_its_decoder_loads_as_a_captioner(collection, tmp_path):
    from captioning.registry import create_captioner

    out = tmp_path / "mt"
    report = finetune(collection, **TINY, objective="multitask", out=out, epochs=3, queue_size=16,
                      heldout_taxa=0, heldout_specimens=0.2)
    assert report["finished"] and report["captioner"] == str(out / "model")
    assert all(math.isfinite(h["loss"]) for h in report["history"])
    state = json.loads((out / "train" / "checkpoint" / "state.json").read_text())
    assert state["step"] == report["steps"] > 0
    captioner = create_captioner(f"local-dir:{out}", device="cpu", precision="fp32")
    assert captioner.meta["trained"] and captioner.meta["encoder"]["fingerprint"] == report["fingerprint"]
    assert captioner.encoder.fingerprint == report["fingerprint"]  # its encoder is the fine-tuned one
    sheet = next(iter(sorted((collection / "images").rglob("*.jpg"))))
    out_text = captioner.caption([sheet])[0]
    assert set(out_text["sections"]) == set(captioner.organs)


def test_lora_run_with_accumulation_exports_plain_weights_that_reload(collection, tmp_path):
    pytest.importorskip("peft", reason="LoRA needs the optional peft package")
    report = finetune(collection, **TINY, out=tmp_path / "lora", epochs=1, lora_rank=4, lr=1e-3, grad_accum=2,
                      evaluate=False)
    from finetuning.train import _epoch_batches

    pairs = collect_pairs(collection)
    micro_batches = len(_epoch_batches(pairs, {"batch_size": 8, "per_taxon": 2, "seed": 0}, 0, 1, 0))
    assert micro_batches >= 3 and report["steps"] == report["total_steps"] == math.ceil(micro_batches / 2)
    assert report["finished"] and report["trainable_parameters"] < 20_000  # the adapters (and the temperature) only
    encoder = create_encoder(report["encoder"], device="cpu")  # LoRA merged: a plain open_clip checkpoint
    assert encoder.fingerprint == report["fingerprint"] != create_encoder("tiny-test", device="cpu").fingerprint


def test_multitask_needs_descriptions(tmp_path):
    from retrieval.collections import ingest

    col = tmp_path / "col"
    ingest(_sheets(tmp_path / "sheets", {"V01": "", "V02": ""}, per_taxon=3), col, progress=False)
    pairs = collect_pairs(col, heldout_taxa=0, heldout_specimens=0)
    assert [t.key for t in pairs.taxa] == ["V01", "V02"] and not pairs.taxa[0].genus  # a code is a taxon, not a name
    with pytest.raises(BadInput, match="descriptions"):
        finetune(col, **TINY, objective="multitask", out=tmp_path / "out", epochs=1, heldout_specimens=0,
                 heldout_taxa=0)


def test_resumed_run_continues_exactly_as_an_uninterrupted_one(collection, tmp_path):
    options = {**TINY, "objective": "multitask", "epochs": 3, "queue_size": 16, "evaluate": False}
    whole = finetune(collection, **options, out=tmp_path / "whole")
    part = finetune(collection, **options, out=tmp_path / "part", max_steps=4)
    assert not part["finished"] and part["steps"] == 4 and part["encoder"] is None
    resumed = finetune(collection, **options, out=tmp_path / "part")
    assert resumed["resumed_from"] == 4 and resumed["finished"] and resumed["steps"] == whole["steps"]
    assert resumed["history"] == whole["history"]
    assert resumed["fingerprint"] == whole["fingerprint"]
    with pytest.raises(BadInput, match="no-resume"):  # other options cannot continue that checkpoint
        finetune(collection, **{**options, "epochs": 4}, out=tmp_path / "part")


@pytest.mark.slow
def test_killed_run_resumes_from_its_last_checkpoint(collection, tmp_path):
    out = tmp_path / "killed"
    state_file = out / "train" / "checkpoint" / "state.json"
    args = ["finetune", str(collection), "--model", "tiny-test", "--out", str(out), "--epochs", "4", "--batch-size", "4",
            "--save-every", "1", "--device", "cpu", "--no-eval", "--quiet"]
    proc = subprocess.Popen([sys.executable, "-m", "herbaria", *args], cwd=Path(__file__).resolve().parents[1],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if json.loads(state_file.read_text()).get("step", 0) >= 3:
                    break
            except (OSError, ValueError):  # not written yet, or being swapped
                pass
            time.sleep(0.2)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:] if proc.stderr else "exited early"
        os.kill(proc.pid, signal.SIGKILL)  # no chance to save anything
    finally:
        proc.wait(timeout=30)
    assert not (out / "open_clip_model.safetensors").exists()
    saved = json.loads(next(p for p in (state_file, state_file.parent.with_name("checkpoint.old") / "state.json")
                            if p.exists()).read_text())["step"]
    assert saved >= 3
    report = finetune(collection, model="tiny-test", out=out, epochs=4, batch_size=4, device="cpu", evaluate=False,
                      progress=False)
    assert report["resumed_from"] == saved and report["finished"] and report["steps"] == report["total_steps"]
    assert create_encoder(report["encoder"], device="cpu").fingerprint == report["fingerprint"]


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    from retrieval.collections import ingest

    col = tmp_path / "col"
    ingest(_sheets(tmp_path / "sheets", {"Rosa canina": "Rosaceae"}, per_taxon=2), col, progress=False)
    assert main(["finetune", str(col), "--model", "tiny-test"]) == 2
    assert "at least 2" in capsys.readouterr().err
    assert main(["finetune", str(col), "--model", "tiny-test", "--temperature", "warm"]) == 2
    err = capsys.readouterr().err
    assert "temperature" in err and len(err.strip().splitlines()) == 1
    assert main(["finetune", str(tmp_path / "nowhere"), "--model", "tiny-test"]) == 2
