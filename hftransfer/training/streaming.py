"""``--streaming`` runs: the streamed bundle (a bounded, in-memory validation split beside the training stream) and
the training loader that reads this process's part of the stream, decoding on the fly.

The training loader is not passed through ``accelerator.prepare``: accelerate would either dispatch every batch
from the main process or have each process read the whole stream and keep every n-th batch; here each process
opens its own shards (``split_dataset_by_node``), so the batches are only moved to the device. Its position is
checkpointed per process in ``RunState.streams`` and restored on resume, so no batch is skipped by replay.
"""
from __future__ import annotations

import itertools
import math

import datasets
from accelerate.utils import send_to_device
from datasets.distributed import split_dataset_by_node
from torch.utils.data import DataLoader

from ..data import INDEX_COLUMN, DataBundle
from ..data.splits import with_index
from ..data.streaming import (
    ExampleStream,
    StreamingSplit,
    StreamLabels,
    first_examples,
    open_split,
    raw_columns,
    stream_spec,
)
from ..errors import HFTransferError
from .inputs import data_source, input_column
from .loaders import Loaders, pipeline_kwargs

DEFAULT_EVAL_EXAMPLES = 1000  # --max_eval_samples' default with --streaming: evaluation reads a bounded split


def load_streaming_bundle(cfg, modality: str, processes: int) -> DataBundle:
    """The streamed training split, and the first ``--max_eval_samples`` (default 1000) validation examples (and the
    first ``--max_predict_samples`` test examples) read into memory, labelled like the stream."""
    spec = stream_spec(data_source(cfg))
    column, label_column = input_column(cfg, modality), cfg.label_column_name
    train = open_split(spec, "train")
    columns = train.column_names or list(next(iter(train), {}))
    for name, flag in ((column, f"--{'image' if modality == 'image' else 'text'}_column_name"),
                       (label_column, "--label_column_name")):
        if name not in columns:
            raise HFTransferError(f"column '{name}' not found in the streamed training data (columns: "
                                  f"{', '.join(columns)}): pass {flag}")
    if "validation" not in spec.files:
        raise HFTransferError("--streaming needs a validation split (it cannot hold examples out of a stream it never "
                              "reads whole): pass --validation_file (a file or a glob), or a dataset with a validation "
                              "split")
    labels = StreamLabels.of(train.features, label_column, cfg.label_names)
    examples = cfg.max_steps * cfg.gradient_accumulation_steps * cfg.per_device_train_batch_size * processes
    split = StreamingSplit(spec, labels, column, label_column, seed=cfg.seed, examples=examples,
                           limit=cfg.max_train_samples)
    evaluation = bounded_split(spec, "validation", split, cfg.max_eval_samples or DEFAULT_EVAL_EXAMPLES)
    if len(evaluation) == 0:
        raise HFTransferError("the validation split is empty: pass validation examples with --validation_file")
    test = bounded_split(spec, "test", split, cfg.max_predict_samples) if "test" in spec.files else None
    return DataBundle(split, evaluation, dict(enumerate(labels.names)), False, column, test=test or None)


def bounded_split(spec, name: str, train: StreamingSplit, limit: int | None) -> datasets.Dataset:
    """The first ``limit`` examples (all without one) of split ``name``, labelled, with an example id."""
    ds = raw_columns(open_split(spec, name), train.input_column)
    ds = ds.select_columns([train.input_column, train.label_column])
    rows = first_examples(ds, limit) if limit else datasets.Dataset.from_list(list(ds), features=ds.features)
    if len(rows) == 0:
        return rows
    rows = rows.map(lambda v: {"labels": [train.labels.encode(x) for x in v]}, input_columns=train.label_column,
                    batched=True, desc=f"labelling {name} examples")
    rows = rows.filter(lambda y, x: y is not None and x is not None and (not isinstance(x, str) or bool(x.strip())),
                       input_columns=["labels", train.input_column])
    rows = with_index(rows.cast_column("labels", datasets.Value("int64")))
    if isinstance(rows.features[train.input_column], datasets.Image):  # read undecoded; the eval pipeline decodes
        rows = rows.cast_column(train.input_column, datasets.Image())
    return rows.remove_columns([c for c in rows.column_names if c not in {train.input_column, "labels", INDEX_COLUMN}])


class StreamingLoader:
    """This process's training batches from an ``ExampleStream``, on ``device``, ``batches_per_epoch`` at a time: the
    run's ``--max_steps`` cut into ``--num_train_epochs`` parts (a stream has no length to count epochs in). One
    iteration serves the rest of the current part, read from where the stream stands (after a resume too)."""

    def __init__(self, loader: DataLoader, stream: ExampleStream, device, *, batches_per_epoch: int):
        self.loader, self.stream, self.device = loader, stream, device
        self.dataset, self.batches_per_epoch = stream, batches_per_epoch

    def __len__(self) -> int:
        return self.batches_per_epoch

    def __iter__(self):
        done = self.stream.position.yielded // self.loader.batch_size  # every batch is full: lengths are multiples
        for batch in itertools.islice(self.loader, self.batches_per_epoch - done % self.batches_per_epoch):
            yield send_to_device(batch, self.device)

    def set_epoch(self, epoch: int) -> None:
        pass  # the stream's passes reshuffle themselves, by (seed, pass)

    def state_dict(self) -> dict:
        return self.stream.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.stream.load_state_dict(state)


def streaming_train_loader(cfg, split: StreamingSplit, pipeline, *, process_index: int, num_processes: int,
                           device) -> StreamingLoader:
    """The training loader of this process: its shards of every pass, window-shuffled, decoded and augmented on the
    fly (each example's augmentation seeded by its position in the run, unique across processes)."""

    def open_pass(data_pass: int) -> datasets.IterableDataset:
        ds = split.open_pass(data_pass)
        return split_dataset_by_node(ds, rank=process_index, world_size=num_processes) if num_processes > 1 else ds

    def prepare(row: dict, index: int) -> dict | None:
        label = split.label_of(row)
        example = pipeline.stream_example(row[split.input_column], index) if label is not None else None
        if example is not None:
            example["labels"] = label
        return example

    per_process = cfg.max_steps * cfg.gradient_accumulation_steps * cfg.per_device_train_batch_size
    stream = ExampleStream(open_pass, prepare, length=per_process, window=cfg.shuffle_buffer_size, seed=cfg.seed,
                           index_base=process_index, index_stride=num_processes)
    # no worker processes: the stream's position, read by the checkpoint, lives in this process
    loader = DataLoader(stream, batch_size=cfg.per_device_train_batch_size, collate_fn=pipeline.collate, num_workers=0)
    steps_per_epoch = math.ceil(cfg.max_steps / cfg.num_train_epochs)
    return StreamingLoader(loader, stream, device, batches_per_epoch=steps_per_epoch * cfg.gradient_accumulation_steps)


def streaming_loaders(cfg, bundle: DataBundle, backbone, accelerator) -> Loaders:
    """The run's loaders over a streamed bundle: this process's training stream; the bounded validation (and test)
    splits decoded once and served as in any run."""
    pipeline = backbone.data_pipeline(**pipeline_kwargs(cfg, backbone.modality))
    column, common = bundle.input_column, {"num_workers": 0, "collate_fn": pipeline.collate, "shuffle": False}
    evaluation = pipeline.prepare(bundle.eval, column, "eval")
    train = streaming_train_loader(cfg, bundle.train, pipeline, process_index=accelerator.process_index,
                                   num_processes=accelerator.num_processes, device=accelerator.device)
    loaders = Loaders(train=train, eval=DataLoader(pipeline.eval_view(evaluation, column),
                                                   batch_size=cfg.per_device_eval_batch_size, **common),
                      preprocessing=pipeline.key, fingerprints={"eval": evaluation._fingerprint}, pipeline=pipeline,
                      prepared={"eval": evaluation}, streamed=True)
    if bundle.test is not None:
        test = pipeline.prepare(bundle.test, column, "test")
        loaders.test = DataLoader(pipeline.eval_view(test, column), batch_size=cfg.per_device_eval_batch_size, **common)
    return loaders
