"""The run report (confusion matrix, per-class table, curves) and the from-scratch transfer-gain comparison."""

import json
import math

import numpy as np
import pytest
from builders import IMAGE_TINY_MODEL, read_results, recipe_in_process, run_recipe, save_tiny_timm_weights

from hftransfer.errors import HFTransferError
from hftransfer.evaluation.report import confusion_matrix, transfer_gain, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _is_png(path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 2000


def _fake_run(folder, labels, predictions, accuracy=None, seed=None, history=None):
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "eval_predictions.jsonl", "w") as f:
        for i, (y, p) in enumerate(zip(labels, predictions)):
            f.write(json.dumps({"index": i, "label": y, "prediction": p}) + "\n")
    acc = accuracy if accuracy is not None else float(np.mean(np.array(labels) == np.array(predictions)))
    (folder / "all_results.json").write_text(json.dumps({"eval_accuracy": acc, "history": history or []}))
    if seed is not None:
        (folder / "config.yaml").write_text(f"seed: {seed}\n")
    return folder


def test_confusion_matrix_counts_single_and_multi_label():
    records = [{"label": 0, "prediction": 0}, {"label": 0, "prediction": 2}, {"label": 2, "prediction": 2},
               {"label": 1, "prediction": 0}]
    assert confusion_matrix(records, 3).tolist() == [[1, 0, 1], [1, 0, 0], [0, 0, 1]]
    multi = [{"label": [1, 0], "prediction": [1, 1]}, {"label": [0, 1], "prediction": [0, 0]}]
    # rows per label: TP, FN, FP, TN
    assert confusion_matrix(multi, 2, multi_label=True).tolist() == [[1, 0, 0, 1], [0, 1, 1, 0]]


def test_transfer_gain_matches_hand_computation(tmp_path):
    labels = [0, 1] * 10
    pre = _fake_run(tmp_path / "pre", labels, labels[:18] + [1, 0])  # 18/20 right
    s1 = _fake_run(tmp_path / "s1", labels, [0] * 20, seed=1)  # 10/20 right
    s2 = _fake_run(tmp_path / "s2", labels, labels[:12] + [0] * 8, seed=2)  # 12 + 4 = 16/20 right
    gain = transfer_gain(pre, [s1, s2])
    correct_pre = np.array([1.0] * 18 + [0, 0])
    correct_s = (np.array([i % 2 == 0 for i in range(20)], float) + np.array([1.0] * 12 + [i % 2 == 0 for i in range(12, 20)])) / 2
    diff = correct_pre - correct_s
    se = diff.std(ddof=1) / math.sqrt(20)
    sd = np.std([0.5, 0.8], ddof=1)
    assert gain.pretrained_accuracy == pytest.approx(0.9)
    assert gain.scratch_accuracy == pytest.approx(0.65)
    assert gain.gain == pytest.approx(0.25)
    assert gain.se_examples == pytest.approx(se)
    assert gain.sd_scratch_seeds == pytest.approx(sd)
    assert gain.noise_margin == pytest.approx(2 * math.sqrt(se ** 2 + sd ** 2 * 1.5))
    assert gain.negative_transfer is (0.25 <= gain.noise_margin)
    assert [r.seed for r in gain.scratch_runs] == [1, 2]
    assert "+0.2500" in gain.summary


def test_transfer_gain_verdicts(tmp_path):
    labels = [0, 1] * 50
    perfect = _fake_run(tmp_path / "perfect", labels, labels)
    chance = _fake_run(tmp_path / "chance", labels, [0] * 100)
    helped = transfer_gain(perfect, [chance])
    assert helped.gain == pytest.approx(0.5)
    assert not helped.negative_transfer
    assert helped.summary.count("Transfer helped") == 1
    same = transfer_gain(chance, [_fake_run(tmp_path / "chance2", labels, [0] * 100)])
    assert same.gain == 0
    assert same.negative_transfer
    assert "within the noise margin" in same.summary
    worse = transfer_gain(chance, [perfect])
    assert worse.gain == pytest.approx(-0.5)
    assert worse.negative_transfer
    assert "random init did better" in worse.summary


def test_transfer_gain_refuses_runs_scored_on_other_examples(tmp_path):
    pre = _fake_run(tmp_path / "pre", [0, 1, 0], [0, 1, 0])
    other = _fake_run(tmp_path / "other", [0, 1], [0, 1])
    with pytest.raises(HFTransferError, match="other examples"):
        transfer_gain(pre, [other])


def test_write_report_files(tmp_path):
    labels = [0, 1, 2] * 4
    run = _fake_run(tmp_path / "run", labels, [0, 1, 1] * 4, history=[
        {"epoch": 1, "train_loss": 1.0, "eval_loss": 0.9, "eval_accuracy": 0.5, "eval_f1": 0.4},
        {"epoch": 2, "train_loss": 0.7, "eval_loss": 0.8, "eval_accuracy": 0.67, "eval_f1": 0.6}])
    results = json.loads((run / "all_results.json").read_text())
    results.update({"best_epoch": 2, "eval_per_class": {
        "a": {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 4},
        "b": {"precision": 0.5, "recall": 1.0, "f1": 0.6667, "support": 4},
        "c": {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 4}}})
    (run / "all_results.json").write_text(json.dumps(results))
    written = {p.name for p in write_report(run)}
    assert written == {"confusion_matrix.png", "training_curves.png", "per_class_metrics.csv"}
    assert _is_png(run / "confusion_matrix.png")
    assert _is_png(run / "training_curves.png")
    rows = (run / "per_class_metrics.csv").read_text().splitlines()
    assert rows[0] == "label,precision,recall,f1,support"
    assert rows[2] == "b,0.5000,1.0000,0.6667,4"
    assert len(rows) == 4


@pytest.mark.integration
def test_recipe_compares_with_scratch_and_reports(tmp_path, image_data):
    """--compare_scratch: a from-scratch twin on the same eval examples, the gain in results and card,
    plots in output_dir; a resumed run keeps the finished scratch run instead of retraining it."""
    save_tiny_timm_weights(tmp_path / "init.safetensors")
    out = tmp_path / "run"
    args = ["--model_name_or_path", "test_efficientnet", "--weights", tmp_path / "init.safetensors",
            "--train_dir", image_data["train"], "--validation_dir", image_data["val"], "--output_dir", out,
            "--num_train_epochs", "2", "--per_device_train_batch_size", "4", "--compare_scratch", "--scratch_seeds", "2"]
    proc = run_recipe("image_cls", *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = read_results(out)
    gain = results["transfer_gain"]
    assert gain["scratch_seeds"] == 2
    assert len(gain["scratch_runs"]) == 2
    assert [r["seed"] for r in gain["scratch_runs"]] == [42, 43]
    assert gain["pretrained_accuracy"] == pytest.approx(results["eval_accuracy"])
    assert gain["gain"] == pytest.approx(results["eval_accuracy"] - np.mean([r["accuracy"] for r in gain["scratch_runs"]]))
    assert isinstance(gain["negative_transfer"], bool)
    for seed in (42, 43):
        scratch = read_results(out / "scratch" / f"seed_{seed}")
        assert scratch["transfer"]["weights"] == "random"
        assert scratch["transfer"]["strategy"] == "full"
        assert scratch["epochs"] == 2
        assert scratch["eval_samples"] == results["eval_samples"]
        assert not (out / "scratch" / f"seed_{seed}" / "best_model").exists()
    for name in ("confusion_matrix.png", "training_curves.png"):
        assert _is_png(out / name)
    assert (out / "per_class_metrics.csv").read_text().startswith("label,precision")
    card = (out / "README.md").read_text()
    assert "## Did transfer help?" in card
    assert "transfer gain" in card
    assert "](confusion_matrix.png)" in card
    assert "](training_curves.png)" in card
    assert "from-scratch run 2/2" in proc.stdout

    again = run_recipe("image_cls", *args, "--resume_from_checkpoint", "latest")
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("already done") == 2
    assert read_results(out)["transfer_gain"]["gain"] == pytest.approx(gain["gain"])


@pytest.mark.integration
def test_compare_scratch_rejects_random_weights(tmp_path, image_data, capsys):
    proc = recipe_in_process(capsys, "image_cls", *IMAGE_TINY_MODEL,
                      "--train_dir", image_data["train"], "--output_dir", tmp_path / "run", "--compare_scratch")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: --compare_scratch")
