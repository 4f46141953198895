"""``--streaming``: Parquet / JSONL / webdataset shards read as ``datasets`` IterableDatasets, decoded on the fly, each
process on its own shards, and a killed or resumed run continuing with exactly the batches (and so the weights) of
an uninterrupted one. The stream's own resume (window shuffle + ``state_dict``) is checked example by example here,
fast; the recipe runs (fresh interpreters, ``accelerate launch``) are integration tests."""
from __future__ import annotations

import io
import itertools
import json
import tarfile

import datasets
import numpy as np
import pytest
from builders import IMAGE_TINY, launch_two_processes, read_results, recipe_in_process, run_recipe
from PIL import Image
from safetensors.torch import load_file

from hftransfer.data.sources import DataSource
from hftransfer.data.streaming import ExampleStream, StreamingSplit, StreamLabels, open_split, stream_spec
from hftransfer.errors import HFTransferError

CLASSES = ("cats", "dogs")


def png_bytes(label: int, rng) -> bytes:
    pixels = np.clip(rng.normal(60 + 120 * label, 30, (32, 32, 3)), 0, 255).astype("uint8")
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def write_image_shards(folder, prefix: str, shards: int, per_shard: int, seed: int = 0) -> str:
    """Parquet shards as ``datasets`` writes them: an Image column (bytes) and a ClassLabel; returns their glob."""
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=list(CLASSES))})
    folder.mkdir(parents=True, exist_ok=True)
    for shard in range(shards):
        rng = np.random.default_rng([seed, shard])
        labels = [i % 2 for i in range(per_shard)]
        images = [{"bytes": png_bytes(y, rng), "path": f"{shard}-{i}.png"} for i, y in enumerate(labels)]
        ds = datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)
        ds.to_parquet(str(folder / f"{prefix}-{shard:05d}.parquet"))
    return str(folder / f"{prefix}-*.parquet")


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> dict:
    """4 training shards of 6 images (24: a 2-process run of 6 steps x batch 4 reads them 2 times over) and one
    validation shard of 10."""
    root = tmp_path_factory.mktemp("shards")
    return {"train": write_image_shards(root, "train", 4, 6), "val": write_image_shards(root, "validation", 1, 10, 1)}


def stream_args(shards: dict, out, *extra) -> list:
    return [*IMAGE_TINY, "--learning_rate", "0.01", "--streaming", "--train_file", shards["train"], "--validation_file",
            shards["val"], "--max_steps", "6", "--num_train_epochs", "2", "--strategy", "lp_ft", "--lp_epochs", "1",
            "--shuffle_buffer_size", "5", "--checkpointing_steps", "2", "--save_total_limit", "0", "--output_dir", out,
            *extra]


# ---------------------------------------------------------------------------------------------- the stream itself
def text_stream(split: StreamingSplit, rank: int, world: int, length: int) -> ExampleStream:
    from datasets.distributed import split_dataset_by_node

    return ExampleStream(lambda p: split_dataset_by_node(split.open_pass(p), rank=rank, world_size=world),
                         lambda row, index: {"text": row["text"], "index": index}, length=length, window=7, seed=3,
                         index_base=rank, index_stride=world)


@pytest.fixture(scope="module")
def text_split(tmp_path_factory) -> StreamingSplit:
    root = tmp_path_factory.mktemp("text_shards")
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["a", "b"])})
    for shard in range(4):
        rows = {"text": [f"{shard}-{i}" for i in range(25)], "label": [i % 2 for i in range(25)]}
        datasets.Dataset.from_dict(rows, features=features).to_parquet(str(root / f"train-{shard}.parquet"))
    spec = stream_spec(DataSource(train_file=str(root / "train-*.parquet")))
    labels = StreamLabels.of(open_split(spec, "train").features, "label", None)
    return StreamingSplit(spec, labels, "text", "label", seed=1, examples=0)


def test_a_resumed_stream_continues_with_the_very_next_example(text_split):
    """Cut anywhere (inside a window, at its edge, across a pass), reloaded from ``state_dict``: the same sequence."""
    full = [e["text"] for e in text_stream(text_split, 0, 2, 120)]
    assert len(full) == 120 and len(set(full[:50])) == 50  # a pass is 50 examples on this process: no repeat in it
    for cut in (5, 7, 13, 49, 50, 51, 77):
        stream = text_stream(text_split, 0, 2, 120)
        head = [e["text"] for e in itertools.islice(iter(stream), cut)]
        resumed = text_stream(text_split, 0, 2, 120)
        resumed.load_state_dict(json.loads(json.dumps(stream.state_dict())))  # checkpoints pickle it: plain data
        assert head + [e["text"] for e in resumed] == full, cut


def test_each_process_reads_its_own_shards_and_passes_reshuffle(text_split):
    """Within a pass the two processes split the data (2 shards each); every pass deals the shards anew."""
    first, second = (list(text_stream(text_split, rank, 2, 100)) for rank in (0, 1))
    everything = {f"{s}-{i}" for s in range(4) for i in range(25)}
    for data_pass in (slice(0, 50), slice(50, 100)):
        mine, theirs = {e["text"] for e in first[data_pass]}, {e["text"] for e in second[data_pass]}
        assert not mine & theirs and mine | theirs == everything
    assert [e["text"] for e in first[:50]] != [e["text"] for e in first[50:]]  # pass 2: another order
    assert sorted(e["index"] for e in first + second) == list(range(200))  # augmentation seeds: unique


def test_labels_come_from_the_class_label_or_label_names():
    class_label = datasets.Features({"label": datasets.ClassLabel(names=["neg", "pos"])})
    assert StreamLabels.of(class_label, "label", None).names == ("neg", "pos")
    named = StreamLabels.of(datasets.Features({"label": datasets.Value("string")}), "label", ["neg", "pos"])
    assert [named.encode(v) for v in ("pos", 0, "1", None, " ")] == [1, 0, 1, None, None]
    with pytest.raises(HFTransferError, match="pass --label_names NAME"):
        StreamLabels.of(datasets.Features({"label": datasets.Value("string")}), "label", None)
    with pytest.raises(HFTransferError, match="label 'maybe' is not one of the 2 labels"):
        named.encode("maybe")
    with pytest.raises(HFTransferError, match="has 3 names but the data's 'label' has 2 classes"):
        StreamLabels.of(class_label, "label", ["a", "b", "c"])


# ---------------------------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("extra, message", [
    (["--max_steps", "-1"], "error: --streaming needs --max_steps N: a stream has no length to count epochs in"),
    (["--shots", "2"], "error: --shots does not combine with --streaming (it draws K examples per class"),
    (["--sampler", "balanced"], "error: --sampler balanced does not combine with --streaming"),
    (["--class_weights", "balanced"], "error: --class_weights balanced does not combine with --streaming"),
    (["--head_init", "prototypes"], "error: --head_init prototypes does not combine with --streaming"),
    (["--compare_scratch", "--weights", "pretrained"], "error: --compare_scratch does not combine with --streaming"),
    (["--dataloader_num_workers", "2"], "error: --dataloader_num_workers 2 does not combine with --streaming"),
    (["--strategy", "contrastive"], "error: --strategy contrastive does not combine with --streaming"),
])
def test_what_needs_the_whole_split_is_refused_in_one_line(capsys, tmp_path, shards, extra, message):
    proc = recipe_in_process(capsys, "image_cls", *stream_args(shards, tmp_path / "run"), *extra)
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr
    assert not (tmp_path / "run").exists()


def test_streamed_data_problems_are_one_line(capsys, tmp_path, shards):
    no_match = stream_args(shards, tmp_path / "a")
    no_match[no_match.index("--train_file") + 1] = str(tmp_path / "nothing-*.parquet")
    proc = recipe_in_process(capsys, "image_cls", *no_match)
    assert "error: --train_file '" in proc.stderr and "matches no file" in proc.stderr
    no_validation = [a for a in stream_args(shards, tmp_path / "b") if a not in ("--validation_file", shards["val"])]
    proc = recipe_in_process(capsys, "image_cls", *no_validation)
    assert "error: --streaming needs a validation split" in proc.stderr
    proc = recipe_in_process(capsys, "image_cls", *stream_args(shards, tmp_path / "c", "--image_column_name", "jpg"))
    assert "error: column 'jpg' not found in the streamed training data (columns: image, label)" in proc.stderr


def test_text_jsonl_streams_with_label_names(capsys, tmp_path, tiny_bert):
    """JSONL text labels are plain strings: --label_names gives the set a stream cannot be scanned for."""
    rng = np.random.default_rng(0)
    for name, n in (("train", 24), ("validation", 8)):
        rows = [{"text": " ".join(rng.choice(["good", "great"] if i % 2 else ["bad", "awful"], 4)),
                 "label": ["neg", "pos"][i % 2]} for i in range(n)]
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = ["--model_name_or_path", tiny_bert, "--streaming", "--train_file", tmp_path / "train.jsonl",
              "--validation_file", tmp_path / "validation.jsonl", "--max_steps", "4", "--strategy", "full",
              "--per_device_train_batch_size", "4", "--learning_rate", "1e-3"]
    proc = recipe_in_process(capsys, "text_cls", *common, "--output_dir", tmp_path / "refused")
    assert "error: --streaming cannot scan the data for its labels, and column 'label' is not a ClassLabel" in (
        proc.stderr)
    proc = recipe_in_process(capsys, "text_cls", *common, "--label_names", "neg", "pos",
                             "--output_dir", tmp_path / "run")
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = read_results(tmp_path / "run")
    assert results["eval_samples"] == 8 and results["train_samples"] == 16  # 4 steps x 4: what the run drew
    assert results["history"][-1]["step"] == 4


def test_webdataset_tar_shards_stream(capsys, tmp_path):
    """A webdataset tar (``xxx.png`` + ``xxx.cls``): its columns are named by the file suffixes."""
    rng = np.random.default_rng(0)
    for name, n in (("train-000", 12), ("validation-000", 6)):
        with tarfile.open(tmp_path / f"{name}.tar", "w") as tar:
            for i in range(n):
                for suffix, data in ((".png", png_bytes(i % 2, rng)), (".cls", str(i % 2).encode())):
                    info = tarfile.TarInfo(f"{i:06d}{suffix}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    proc = recipe_in_process(capsys, "image_cls", *IMAGE_TINY, "--streaming", "--train_file", tmp_path / "train-*.tar",
                             "--validation_file", tmp_path / "validation-000.tar", "--image_column_name", "png",
                             "--label_column_name", "cls", "--label_names", *CLASSES, "--max_steps", "3",
                             "--strategy", "full", "--output_dir", tmp_path / "run")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert read_results(tmp_path / "run")["eval_samples"] == 6


# ---------------------------------------------------------------------------------------------- whole runs
def final_weights(out, step: int = 6) -> dict:
    return load_file(out / "checkpoints" / f"step_{step}" / "model.safetensors")


def largest_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


@pytest.mark.integration
def test_sigkilled_streaming_run_resumes_bit_identical(tmp_path, shards):
    """One process, a parquet glob: killed mid-epoch (step 5 of 6, 3 per epoch; mid-window, after the checkpoint at
    step 4), resumed with ``latest``: the same final weights and history as the uninterrupted run."""
    reference = run_recipe("image_cls", *stream_args(shards, tmp_path / "reference"))
    assert reference.returncode == 0, reference.stderr[-3000:]
    assert "data: streaming" in reference.stdout and "(4 shard(s), 24 examples over the run)" in reference.stdout
    killed = run_recipe("image_cls", *stream_args(shards, tmp_path / "run"), env={"HFTRANSFER_TEST_KILL_AT_STEP": "5"})
    assert killed.returncode == -9, killed.stderr[-3000:]
    resumed = run_recipe("image_cls", *stream_args(shards, tmp_path / "run", "--resume_from_checkpoint", "latest"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout and "step_4 at epoch 1, step 4" in resumed.stdout
    assert largest_difference(final_weights(tmp_path / "run"), final_weights(tmp_path / "reference")) == 0
    assert read_results(tmp_path / "run")["history"] == read_results(tmp_path / "reference")["history"]


@pytest.mark.integration
def test_two_process_streaming_run_resumes_exactly(tmp_path, shards):
    """Two gloo processes, each on its own 2 shards; a second launch resumed from the first's step-4 checkpoint
    (mid-epoch 2 of 2, in the second pass over the data) ends with the same weights; another world size is refused."""
    first = launch_two_processes("image_cls", *stream_args(shards, tmp_path / "first", "--ddp_timeout", "120"))
    assert first.returncode == 0, first.stderr[-4000:]
    assert read_results(tmp_path / "first")["world_size"] == 2
    checkpoint = tmp_path / "first" / "checkpoints" / "step_4"
    resumed = launch_two_processes("image_cls", *stream_args(shards, tmp_path / "second", "--ddp_timeout", "120",
                                                              "--resume_from_checkpoint", checkpoint))
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert largest_difference(final_weights(tmp_path / "second"), final_weights(tmp_path / "first")) == 0
    alone = run_recipe("image_cls", *stream_args(shards, tmp_path / "third", "--resume_from_checkpoint", checkpoint))
    assert "error: this checkpoint was written by 2 streaming process(es) and this run has 1" in alone.stderr


def test_rank_refuses_streaming():
    from hftransfer.config import RankConfig

    with pytest.raises(HFTransferError, match="--streaming does not apply to hftransfer rank"):
        RankConfig(candidates=["a", "b"], train_file="shards/*.parquet", streaming=True).validate()
