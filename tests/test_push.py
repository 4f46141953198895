"""Push to the Hub against the loopback server (tests/hub_server.py) with the unmodified client.

A pushed model is loaded back in a fresh Python process in which hftransfer cannot be imported,
with plain timm, AutoModelFor... and pipeline, and compared logit for logit with hftransfer. Also:
branches (revision), pull requests, a no-op re-push, the failure cases (401, 404, server down, no
token), the start-up check of --push_to_hub (``check_push_target``), a plain folder push that knows no
model, and the recipes' --push_to_hub flags end to end.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
from pathlib import Path

import pytest
import torch
from builders import (
    IMAGE_TINY_MODEL,
    LABELS,
    LOAD_WITHOUT_HFTRANSFER,
    ROOT,
    TEXT_LABELS,
    TEXTS,
    ScaledHead,
    image_args,
    image_data_args,
    image_model,
    logits_of,
    make_run_dir,
    noise_image,
    run_python,
    text_inputs,
    text_model,
)
from hub_server import HubError
from huggingface_hub import metadata_load

from hftransfer import HFTransferError, TransferModel
from hftransfer.data.preprocessing import image_transforms
from hftransfer.hub.push import check_push_target, main, push_folder, push_output_dir


def _env(hub) -> dict:
    env = {**os.environ, **hub.env}
    env.pop("PYTHONPATH", None)
    return env


def _repo_files(hub, repo_id: str, revision: str = "main") -> dict[str, bytes]:
    return {p: f.content for p, f in hub.server.repo(repo_id).resolve(revision).files.items()}


def _assert_no_token(hub, *texts: str, files: dict[str, bytes] | None = None, folder: Path | None = None):
    token = hub.token.encode()
    assert all(hub.token not in t for t in texts)
    assert all(token not in content for content in (files or {}).values())
    if folder is not None:
        assert all(token not in p.read_bytes() for p in folder.rglob("*") if p.is_file())


@pytest.fixture
def image_run(tmp_path) -> tuple[Path, TransferModel]:
    model = image_model()
    return make_run_dir(tmp_path / "img-run", model, "image"), model


# ---------------------------------------------------------------------------------------------- round trip
@pytest.mark.integration
def test_pushed_models_load_without_hftransfer_in_timm_transformers_and_pipeline(hub, tmp_path, image_run, tiny_bert):
    image_dir, image_net = image_run
    text_net = text_model(tiny_bert, pooling="pooler")
    text_dir = make_run_dir(tmp_path / "txt-run", text_net, "text", model_name_or_path=str(tiny_bert),
                            weights="pretrained", pooling="pooler", strategy="full", layer_decay=1.0)

    url = push_output_dir(image_dir, "user/img", private=False, revision=None, create_pr=False)
    assert url.startswith(f"{hub.url}/user/img/commit/")
    push_output_dir(text_dir, "user/txt", private=True, revision=None, create_pr=False)
    assert hub.server.repo("user/txt").private

    pushed = _repo_files(hub, "user/img")
    assert {"README.md", "model.safetensors", "config.json", "hftransfer_config.json", "all_results.json",
            "config.yaml", "eval_predictions.jsonl"} <= set(pushed)
    assert not any(p.startswith(("checkpoints/", "best_model/")) for p in pushed)
    assert hub.server.repo("user/img").resolve("main").files["model.safetensors"].lfs
    card = metadata_load(image_dir / "README.md")
    assert card["library_name"] == "timm"
    assert pushed["README.md"] == (image_dir / "README.md").read_bytes()
    assert 'hf-hub:user/img"' in pushed["README.md"].decode()  # the card names the repo it was pushed to
    _assert_no_token(hub, files=pushed)
    _assert_no_token(hub, files=_repo_files(hub, "user/txt"))

    image_path = tmp_path / "probe.png"
    noise_image(3).save(image_path)
    jobs = tmp_path / "jobs.json"
    jobs.write_text(json.dumps({"image": {"repo": "user/img", "image": str(image_path)},
                                "text": {"repo": "user/txt", "texts": TEXTS}}))
    script = tmp_path / "load_without_hftransfer.py"
    script.write_text(LOAD_WITHOUT_HFTRANSFER)
    proc = run_python(script, jobs, cwd=tmp_path, env=_env(hub), timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])

    from PIL import Image

    pixels = image_transforms(image_net.backbone.data_config, False)(Image.open(image_path).convert("RGB"))[None]
    expected = logits_of(image_net, pixels)
    got = loaded["image"]
    assert torch.allclose(torch.tensor(got["timm"]), expected, atol=1e-5)
    assert torch.allclose(torch.tensor(got["transformers"]), expected, atol=1e-5)
    assert got["timm_labels"] == list(LABELS.values())
    assert got["transformers_labels"] == {str(k): v for k, v in LABELS.items()}
    probs = expected[0].softmax(-1)
    assert {r["label"]: pytest.approx(r["score"], abs=1e-4) for r in got["pipeline"]} == \
        {label: probs[i].item() for i, label in LABELS.items()}

    expected = logits_of(text_net, text_inputs(text_net))
    got = loaded["text"]
    assert torch.allclose(torch.tensor(got["transformers"]), expected, atol=1e-5)
    assert got["transformers_labels"] == {str(k): v for k, v in TEXT_LABELS.items()}
    for row, probs in zip(got["pipeline"], expected.softmax(-1)):
        assert {r["label"]: pytest.approx(r["score"], abs=1e-4) for r in row} == \
            {label: probs[i].item() for i, label in TEXT_LABELS.items()}

    # and back into hftransfer straight from the Hub (snapshot_download), strictly, with equal logits
    from_hub = TransferModel.from_pretrained("user/img")
    assert torch.equal(logits_of(from_hub, pixels), logits_of(image_net, pixels))
    assert hub.server.errors == []
    assert hub.server.unrouted == []


@pytest.mark.integration
def test_custom_code_exports_load_without_hftransfer_from_the_hub_and_from_a_folder(hub, tmp_path, tiny_bert):
    """Mean pooling / MLP heads: AutoModelFor... and pipeline with trust_remote_code, logits equal, labels named."""
    text_net = text_model(tiny_bert, pooling="mean")
    image_net = image_model(head="mlp", head_hidden_sizes=(8,))
    text_dir = make_run_dir(tmp_path / "txt-run", text_net, "text", model_name_or_path=str(tiny_bert), pooling="mean")
    image_dir = make_run_dir(tmp_path / "img-run", image_net, "image")
    push_output_dir(text_dir, "user/txt-mean", private=False, revision=None, create_pr=False)
    push_output_dir(image_dir, "user/img-mlp", private=False, revision=None, create_pr=False)
    image_path = tmp_path / "probe.png"
    noise_image(3).save(image_path)
    jobs = [{"modality": "text", "repo": repo, "texts": TEXTS} for repo in ("user/txt-mean", str(text_dir))]
    jobs += [{"modality": "image", "repo": repo, "image": str(image_path)} for repo in ("user/img-mlp", str(image_dir))]
    (tmp_path / "jobs.json").write_text(json.dumps({"remote_code": jobs}))
    (tmp_path / "load.py").write_text(LOAD_WITHOUT_HFTRANSFER)
    env = {**_env(hub), "HF_MODULES_CACHE": str(tmp_path / "modules")}  # where transformers copies the code
    proc = run_python(tmp_path / "load.py", tmp_path / "jobs.json", cwd=tmp_path, env=env, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(proc.stdout.strip().splitlines()[-1])["remote_code"]

    expected_text = logits_of(text_net, text_inputs(text_net))
    for row in rows[:2]:
        assert row["class"] == "HFTransferForSequenceClassification"
        assert torch.allclose(torch.tensor(row["logits"]), expected_text, atol=1e-5)
        assert row["labels"] == {str(k): v for k, v in TEXT_LABELS.items()}
        for scores, probs in zip(row["pipeline"], expected_text.softmax(-1)):
            assert {r["label"]: pytest.approx(r["score"], abs=1e-4) for r in scores} == \
                {label: probs[i].item() for i, label in TEXT_LABELS.items()}
    for row in rows[2:]:
        assert row["class"] == "HFTransferForImageClassification"
        pixels = torch.tensor(row["pixels"])  # what the repo's image processor made of the file
        assert torch.allclose(torch.tensor(row["logits"]), logits_of(image_net, pixels), atol=1e-5)
        assert row["labels"] == {str(k): v for k, v in LABELS.items()}
        probs = logits_of(image_net, pixels)[0].softmax(-1)
        assert {r["label"]: pytest.approx(r["score"], abs=1e-4) for r in row["pipeline"]} == \
            {label: probs[i].item() for i, label in LABELS.items()}
    from PIL import Image

    ours = image_transforms(image_net.backbone.data_config, False)(Image.open(image_path).convert("RGB"))[None]
    assert torch.allclose(torch.tensor(rows[2]["pixels"]), ours, atol=1e-6)  # the processor is hftransfer's eval transform
    assert hub.server.errors == []


def test_model_push_to_hub_round_trips_and_reports_the_url(hub):
    model = image_model(head="mlp", head_hidden_sizes=(8,))  # hftransfer layout + transformers custom code
    url = model.push_to_hub("user/mlp")
    assert url.startswith(f"{hub.url}/user/mlp/commit/")
    files = _repo_files(hub, "user/mlp")
    assert {"README.md", "model.safetensors", "hftransfer_config.json", "config.json", "modeling_hftransfer.py",
            "preprocessor_config.json"} <= set(files)
    assert json.loads(files["config.json"])["model_type"] == "hftransfer"
    assert b"trust_remote_code=True" in files["README.md"]
    reloaded = TransferModel.from_pretrained("user/mlp")
    pixels = torch.randn(1, 3, 64, 64)
    assert torch.equal(logits_of(reloaded, pixels), logits_of(model, pixels))


# ---------------------------------------------------------------------------------------------- revisions
def test_revision_create_pr_and_unchanged_repush(hub, image_run, caplog):
    caplog.set_level(logging.INFO, logger="hftransfer")
    run_dir, _ = image_run
    first = push_output_dir(run_dir, "user/revs", False, None, False)
    main_sha = hub.server.repo("user/revs").refs["main"]
    hub.server.requests.clear()

    again = push_output_dir(run_dir, "user/revs", False, None, False)
    assert again == first
    assert "nothing changed" in caplog.text
    assert hub.server.requests_to("POST", "/commit/") == []
    assert hub.server.requests_to("PUT", "/lfs-upload/") == []
    assert hub.server.repo("user/revs").refs["main"] == main_sha

    main(["--hub_revision", "experiment", str(run_dir), "--hub_model_id", "user/revs"])  # the retry command line
    assert "experiment" in hub.server.repo("user/revs").branches
    assert (run_dir / "model.safetensors").read_bytes() == hub.server.file_bytes("user/revs", "model.safetensors", "experiment")
    assert TransferModel.from_pretrained("user/revs", revision="experiment").id2label == LABELS

    results = json.loads((run_dir / "all_results.json").read_text())
    results["eval_accuracy"] = 0.99
    (run_dir / "all_results.json").write_text(json.dumps(results))
    pr_url = push_output_dir(run_dir, "user/revs", False, None, True)
    assert pr_url.endswith("/discussions/1")
    assert b"0.99" in hub.server.file_bytes("user/revs", "all_results.json", "refs/pr/1")
    assert hub.server.repo("user/revs").refs["main"] == main_sha  # a PR leaves main alone

    with pytest.raises(HFTransferError, match="pull request against main"):
        push_output_dir(run_dir, "user/revs", False, "experiment", True)

    assert push_output_dir(run_dir, None, False, None, False).startswith(f"{hub.url}/user/img-run/")  # <user>/<folder>


def test_repush_in_another_layout_never_leaves_a_stale_native_config(hub, tmp_path):
    run_dir = make_run_dir(tmp_path / "run", image_model(), "image")
    push_output_dir(run_dir, "user/relayout", False, None, False)
    assert "config.json" in _repo_files(hub, "user/relayout")
    timm_config = (run_dir / "config.json").read_bytes()
    image_model(head="mlp", head_hidden_sizes=(8,)).save_pretrained(run_dir)  # timm layout -> custom code
    push_output_dir(run_dir, "user/relayout", False, None, False)
    assert {"modeling_hftransfer.py", "preprocessor_config.json"} <= set(_repo_files(hub, "user/relayout"))
    image_model(head=ScaledHead(256, 3)).save_pretrained(run_dir)  # -> hftransfer only: its own loader files go
    (run_dir / "config.json").write_bytes(timm_config)  # ... but a rerun into the same output_dir may leave one
    push_output_dir(run_dir, "user/relayout", False, None, False)
    remote = set(_repo_files(hub, "user/relayout"))
    assert not remote & {"config.json", "modeling_hftransfer.py", "preprocessor_config.json"}  # nothing stale to pair
    assert "`config.json`" not in (run_dir / "README.md").read_text()
    assert type(TransferModel.from_pretrained("user/relayout").head).__name__ == "ScaledHead"


# ---------------------------------------------------------------------------------------------- failures
def _assert_one_line(err: pytest.ExceptionInfo, hub, *needles: str) -> str:
    message = str(err.value)
    assert "\n" not in message
    assert hub.token not in message
    for needle in needles:
        assert needle in message, message
    return message


def test_push_failures_give_one_clear_line_and_leave_the_run_intact(hub, image_run, monkeypatch):
    run_dir, _ = image_run
    before = {p.relative_to(run_dir): p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}

    hub.server.require_token = "hf_some_other_token"
    with pytest.raises(HFTransferError) as err:
        push_output_dir(run_dir, "user/denied", False, None, False)
    _assert_one_line(err, hub, "401", "HF_TOKEN", "python -m hftransfer.hub")
    hub.server.require_token = None

    def not_found(payload):
        raise HubError(404, "Repository Not Found", "RepoNotFound")

    with monkeypatch.context() as patch, pytest.raises(HFTransferError) as err:
        patch.setattr(hub.server, "_create_repo", not_found)
        push_output_dir(run_dir, "someone-else/model", False, None, False)
    _assert_one_line(err, hub, "404", "someone-else/model", "--hub_model_id someone-else/model")

    with pytest.raises(HFTransferError) as err:
        TransferModel.from_pretrained("user/never-pushed")
    _assert_one_line(err, hub, "not found", "user/never-pushed")

    with pytest.raises(HFTransferError, match="not a valid Hub repo id"):
        push_output_dir(run_dir, "not a repo id", False, None, False)

    hub.server.stop()
    with pytest.raises(HFTransferError) as err:
        push_output_dir(run_dir, "user/down", False, None, False)
    _assert_one_line(err, hub, "cannot reach the Hub", hub.url)

    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(HFTransferError, match="no Hugging Face token"):
        push_output_dir(run_dir, "user/x", False, None, False)

    after = {p.relative_to(run_dir): p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    assert {k: v for k, v in after.items() if k.name != "README.md"} == before  # only the card was (re)written
    assert (run_dir / "README.md").is_file()


def test_push_refuses_a_folder_that_contains_the_token(hub, image_run):
    run_dir, _ = image_run
    (run_dir / "notes.txt").write_text(f"my token is {hub.token}\n")
    with pytest.raises(HFTransferError, match="notes.txt' contains your Hugging Face token") as err:
        push_output_dir(run_dir, "user/leak", False, None, False)
    assert hub.token not in str(err.value)
    assert ("model", "user/leak") not in hub.server.repos


# ---------------------------------------------------------------------------------------------- recipes
def _recipe(name: str, args: list, hub) -> subprocess.CompletedProcess:
    return run_python(ROOT / "recipes" / name, *args, cwd=ROOT, env=_env(hub), timeout=300)


@pytest.mark.integration
def test_image_recipe_pushes_the_run_with_its_card(hub, tmp_path, image_data):
    out = tmp_path / "run"
    proc = _recipe("image_cls.py", [*IMAGE_TINY_MODEL, *image_data_args(image_data, out),
                                    "--strategy", "linear_probe", "--num_train_epochs", "1",
                                    "--per_device_train_batch_size", "4",
                                    "--push_to_hub", "--hub_model_id", "user/x"], hub)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert ("model", "user/x") in hub.server.repos, "the recipe ran but pushed nothing: is --push_to_hub wired?"
    files = _repo_files(hub, "user/x")
    assert {"README.md", "model.safetensors", "config.json", "hftransfer_config.json", "all_results.json",
            "config.yaml"} <= set(files)
    assert not any(p.startswith(("checkpoints/", "best_model/")) for p in files)
    meta = metadata_load(out / "README.md")
    assert meta["library_name"] == "timm"
    assert meta["model-index"][0]["name"] == "x"
    card = files["README.md"].decode()
    assert card.encode() == (out / "README.md").read_bytes()
    assert "`linear_probe`" in card
    assert "| 1 | 1 | none | `model.conv_stem+bn1` ... " in card  # all groups frozen
    _assert_no_token(hub, proc.stdout, proc.stderr, files=files, folder=out)


@pytest.mark.integration
def test_text_recipe_push_failure_exits_nonzero_with_one_line_and_a_complete_output_dir(hub, tmp_path, tiny_bert,
                                                                                        text_data, monkeypatch):
    """The start-up check passes (token and repo are fine), the final commit is refused: the run is kept whole."""
    out = tmp_path / "run"

    def denied(*args, **kwargs):
        raise HubError(403, "You don't have the rights to write to this repo", "Forbidden")

    monkeypatch.setattr(hub.server, "_commit", denied)  # the server runs in this process, the recipe in another
    proc = _recipe("text_cls.py", ["--model_name_or_path", str(tiny_bert), "--weights", "pretrained", "--pooling", "pooler",
                                   "--train_file", str(text_data["train"]), "--validation_file", str(text_data["val"]),
                                   "--num_train_epochs", "1", "--per_device_train_batch_size", "8", "--max_seq_length", "16",
                                   "--output_dir", str(out), "--push_to_hub", "--hub_model_id", "user/txt"], hub)
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    assert "403" in errors[0] and f"python -m hftransfer.hub {out} --hub_model_id user/txt" in errors[0], errors[0]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert {"model.safetensors", "config.json", "hftransfer_config.json", "tokenizer.json", "all_results.json",
            "config.yaml", "README.md"} <= {p.name for p in out.iterdir()}
    assert json.loads((out / "hftransfer_config.json").read_text())["weights_format"] == "transformers"
    _assert_no_token(hub, proc.stdout, proc.stderr, folder=out)


@pytest.mark.integration
def test_a_recipe_with_a_wrong_token_fails_before_training_in_a_fresh_interpreter(hub, tmp_path, image_data):
    out = tmp_path / "run"
    hub.server.require_token = "hf_a_token_this_user_does_not_have"
    proc = _recipe("image_cls.py", [*IMAGE_TINY_MODEL, *image_data_args(image_data, out), "--num_train_epochs", "1",
                                    "--push_to_hub", "--hub_model_id", "user/x"], hub)
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "401" in errors[0] and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert not (out / "best_model").exists() and not (out / "model.safetensors").exists()  # not one step was taken
    assert "epoch" not in proc.stdout.lower()
    assert hub.server.requests_to("POST", "/commit/") == []
    _assert_no_token(hub, proc.stdout, proc.stderr)


# ---------------------------------------------------------------------------------------------- the start-up check
def test_check_push_target_resolves_the_repo_and_creates_it_without_committing(hub):
    assert check_push_target(None, True, None, False, output_dir_name="my-run") == "user/my-run"  # whoami
    assert hub.server.repo("user/my-run").private
    assert check_push_target("user/named", False, "dev", False, output_dir_name="ignored") == "user/named"
    assert ("model", "user/named") in hub.server.repos
    assert hub.server.requests_to("POST", "/commit/") == []
    assert "dev" not in hub.server.repo("user/named").branches  # the branch is made when the run is pushed
    assert check_push_target("user/named", False, None, False, output_dir_name="x") == "user/named"  # exists: fine


def test_check_push_target_failures_are_one_line(hub, monkeypatch):
    with pytest.raises(HFTransferError, match="pull request against main"):
        check_push_target("user/x", False, "dev", True, output_dir_name="x")
    hub.server.require_token = "hf_some_other_token"
    with pytest.raises(HFTransferError) as err:
        check_push_target("user/x", False, None, False, output_dir_name="x")
    assert "push it again" not in _assert_one_line(err, hub, "401", "HF_TOKEN", "create 'user/x'")
    with pytest.raises(HFTransferError) as err:
        check_push_target(None, False, None, False, output_dir_name="x")
    _assert_one_line(err, hub, "401", "look up your user name")
    hub.server.require_token = None
    hub.server.stop()
    with pytest.raises(HFTransferError) as err:
        check_push_target("user/x", False, None, False, output_dir_name="x")
    _assert_one_line(err, hub, "cannot reach the Hub", hub.url)
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(HFTransferError, match="no Hugging Face token"):
        check_push_target("user/x", False, None, False, output_dir_name="x")


def test_a_recipe_pushes_to_the_default_repo_its_card_names(hub, tmp_path, image_data):
    from hftransfer import cli

    out = tmp_path / "pets-run"
    argv = image_args(image_data, out, "--num_train_epochs", "1", "--strategy", "linear_probe", "--checkpointing_steps",
                      "no", "--push_to_hub")
    cli.run_recipe("image", ROOT / "recipes" / "configs" / "image_cls.yaml", list(map(str, argv)))
    files = _repo_files(hub, "user/pets-run")  # <whoami>/<output_dir name>, resolved before training
    assert files["README.md"] == (out / "README.md").read_bytes()
    assert 'hf-hub:user/pets-run"' in files["README.md"].decode()


# ---------------------------------------------------------------------------------------------- the ONNX export
def test_push_publishes_the_onnx_export_and_the_cards_deployment_section(hub, image_run):
    from hftransfer.records import OnnxExport, RunResults

    run_dir, _ = image_run
    onnx = run_dir / "onnx"
    onnx.mkdir()
    for name in ("model.onnx", "model_int8.onnx", "preprocessing.json", "config.json"):
        (onnx / name).write_bytes(b"{}" if name.endswith(".json") else b"\0" * 64)
    record = OnnxExport(folder="onnx", exporter="torch.onnx (dynamo)", input_names=["pixel_values"],
                        checked_examples=9, max_abs_logit_diff=1e-6)
    record.write(onnx)
    results = RunResults.read(run_dir)
    results.onnx = record
    results.write(run_dir)
    push_output_dir(run_dir, "user/onnx-run", False, None, False)
    files = _repo_files(hub, "user/onnx-run")
    assert {f"onnx/{name}" for name in ("model.onnx", "model_int8.onnx", "preprocessing.json", "config.json",
                                        "export_results.json")} <= set(files)
    assert files["onnx/model.onnx"] == (onnx / "model.onnx").read_bytes()
    card = files["README.md"].decode()
    assert "## Inference and deployment" in card and "| `onnx/export_results.json` |" in card
    assert not any(p.startswith(("checkpoints/", "best_model/")) for p in files)


# ---------------------------------------------------------------------------------------------- a plain folder
def test_push_folder_uploads_a_folder_as_it_is(hub, tmp_path):
    folder = tmp_path / "anything"
    folder.mkdir()
    (folder / "README.md").write_text("---\nlicense: mit\n---\n# a card\n")
    (folder / "weights.bin").write_bytes(b"\0" * 64)
    url = push_folder(folder, "user/plain", revision="dev")
    assert url.startswith(f"{hub.url}/user/plain/commit/")
    assert set(_repo_files(hub, "user/plain", "dev")) >= {"README.md", "weights.bin"}
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "weights.bin"]  # no card or model written here


def test_importing_the_push_module_loads_no_torch():
    code = "import sys, hftransfer.hub.push, hftransfer.hub.errors; print('torch' in sys.modules)"
    proc = run_python("-c", code)
    assert proc.returncode == 0 and proc.stdout.strip() == "False", proc.stderr[-2000:]
