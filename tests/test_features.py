"""Frozen-feature cache and length-grouped batches."""
import pytest
import torch
from builders import IMAGE_TINY_MODEL, image_data_args, read_results, run_recipe
from safetensors.torch import load_file

from hftransfer.training.loaders import LengthGroupedSampler

TINY = [*IMAGE_TINY_MODEL, "--per_device_train_batch_size", "4",
        "--per_device_eval_batch_size", "4", "--head_learning_rate", "0.05", "--strategy", "linear_probe",
        "--num_train_epochs", "3", "--augment", "false"]


def run_probe(image_data, out, *extra):
    proc = run_recipe("image_cls", *TINY, *image_data_args(image_data, out), *extra)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, read_results(out), load_file(out / "checkpoints" / sorted((out / "checkpoints").iterdir())[-1].name / "model.safetensors")


@pytest.mark.integration
def test_cached_linear_probe_matches_the_uncached_one(tmp_path, image_data):
    cached_proc, cached, cached_w = run_probe(image_data, tmp_path / "cached")
    plain_proc, plain, plain_w = run_probe(image_data, tmp_path / "plain", "--feature_cache", "off")
    assert "feature cache: train (12, " in cached_proc.stdout
    assert "feature cache" not in plain_proc.stdout
    assert cached["eval_accuracy"] == plain["eval_accuracy"]
    assert cached["eval_samples"] == plain["eval_samples"] == 10
    assert abs(cached["eval_loss"] - plain["eval_loss"]) < 1e-4
    assert torch.allclose(cached_w["head.fc.weight"], plain_w["head.fc.weight"], atol=1e-4)


@pytest.mark.integration
def test_disk_cache_is_reused_across_runs(tmp_path, image_data):
    cache = tmp_path / "features"
    first, r1, _ = run_probe(image_data, tmp_path / "a", "--feature_cache_dir", cache, "--feature_cache_dtype", "float16")
    second, r2, _ = run_probe(image_data, tmp_path / "b", "--feature_cache_dir", cache, "--feature_cache_dtype", "float16")
    assert "extracted" in first.stdout
    assert "loaded" in second.stdout
    assert "extracted" not in second.stdout
    assert len(list(cache.glob("*.safetensors"))) == 2
    assert r1["eval_accuracy"] == r2["eval_accuracy"]
    assert abs(r1["eval_loss"] - r2["eval_loss"]) < 1e-6


def test_length_grouped_sampler_is_a_seeded_permutation_of_similar_lengths():
    lengths = [int(x) for x in torch.randint(1, 100, (400,))]
    sampler = LengthGroupedSampler(lengths, batch_size=8, seed=1, mega_batches=5)
    order = list(sampler)
    assert sorted(order) == list(range(400))
    assert list(sampler) == order  # same epoch, same order (exact resume)
    sampler.set_epoch(1)
    assert list(sampler) != order
    padded = sum(8 * max(lengths[i] for i in order[k:k + 8]) for k in range(0, 400, 8))
    random_order = torch.randperm(400, generator=torch.Generator().manual_seed(0)).tolist()
    padded_random = sum(8 * max(lengths[i] for i in random_order[k:k + 8]) for k in range(0, 400, 8))
    assert padded < 0.8 * padded_random  # far less padding than random batches
