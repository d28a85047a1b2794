"""`caption_dataset`: a Ray Data dataset of images in, one caption row per image out.

`map_batches` with a callable class: Ray keeps a pool of actors, each of
which builds one `Captioner` in `__init__` and captions every batch it is
given with `Captioner.iter_captions` (the runtime's own per-image error
handling: a bad image becomes its error row, the rest of the batch goes on).
Each actor asks Ray for `num_cpus` CPUs and gives its encoder that many
threads. The default is fractional (0.5) so that on a small machine the
read tasks still find a CPU while the actors hold theirs: an actor pool that
takes every CPU starves the reads and hangs.

Fault tolerance is Ray Data's: the actors of a `map_batches` pool are
created with `max_restarts=-1` and `max_task_retries=-1` (its defaults in
Ray 2.60, which caption_dataset keeps), so an actor that dies, alone or with
its node, is restarted and its batches are retried, and blocks lost with a
node are recomputed from their lineage: a job that loses a node still
captions every image once (tests/ray/test_ray_data.py kills one).

`caption_dataset` never executes the dataset itself: it asks for the
columns only if Ray already knows them (`fetch_if_missing=False`); asking
Ray to fetch them ran the whole read once more before the job (a lazy
`read_binary_files` was read twice per call). When they are unknown each
actor picks the image column from its first batch.

Ray 2.60 notes at actor creation that the actors have "constructor arguments
in the object store and max_restarts > 0": those arguments are Ray Data's own
(its DataContext and map transformer, always passed by reference). capgen's
constructor arguments are small: a shipped model is an ObjectRef to the
files, never the bytes, so restarted actors fetch it again from the
driver's object store, which holds it for the whole job.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from capgen.ray.model_store import ShippedModel, model_folder
from capgen.ray.rows import arrow_schema, row_from_outcome
from capgen.runtime.captioner import check_batch_size
from capgen.runtime.decoding import DecodingOptions
from capgen.runtime.errors import InputError

IMAGE_COLUMNS = ("bytes", "image", "path")  # read_binary_files, read_images, a list of paths
DEFAULT_NUM_CPUS = 0.5


def _image_column(names: list[str], column: str | None) -> str:
    if column is not None:
        if column not in names:
            raise InputError(f"the dataset has no column {column!r} (columns: {', '.join(names)})")
        return column
    for name in IMAGE_COLUMNS:
        if name in names:
            return name
    raise InputError(
        f"no image column in the dataset (columns: {', '.join(names)}); expected one of "
        f"{', '.join(IMAGE_COLUMNS)} (read_binary_files, read_images, paths) or column=NAME"
    )


class CaptionBatches:
    """One actor: one Captioner, loaded once, for every batch this actor is given."""

    def __init__(
        self,
        model: str | Path | ShippedModel | None,
        column: str | None,
        options: DecodingOptions,
        batch_size: int,
        int8: bool,
        fast_decoder: bool,
    ) -> None:
        import ray

        from capgen.runtime.captioner import Captioner

        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
        self.threads = max(1, math.ceil(cpus))
        self.captioner = Captioner(
            model_folder(model), threads=self.threads, int8=int8, fast_decoder=fast_decoder
        )
        self.column = column  # None: the dataset's columns were unknown; the first batch says
        self.options = options
        self.batch_size = batch_size

    def __call__(self, batch: dict[str, Any]) -> Any:
        import pyarrow as pa

        if self.column is None or self.column not in batch:
            self.column = _image_column(list(batch), self.column)
        images = list(batch[self.column])
        paths = batch.get("path")
        names = [str(p) for p in paths] if paths is not None else [None] * len(images)
        outcomes = self.captioner.iter_captions(
            images, options=self.options, batch_size=self.batch_size
        )
        rows = [
            row_from_outcome(name, outcome)
            for name, (_, outcome) in zip(names, outcomes, strict=True)
        ]
        return pa.Table.from_pylist(rows, schema=arrow_schema())


def caption_dataset(
    dataset: Any,
    model: str | Path | ShippedModel | None = None,
    *,
    column: str | None = None,
    batch_size: int = 8,
    concurrency: int | tuple[int, int] = 1,
    num_cpus: float = DEFAULT_NUM_CPUS,
    num_gpus: float = 0,
    beam_size: int = 3,
    max_length: int | None = None,
    length_penalty: float | None = None,
    int8: bool = False,
    fast_decoder: bool = False,
) -> Any:
    """A lazy `ray.data.Dataset` of caption rows (rows.COLUMNS), one per input row.

    `dataset`: rows with image bytes (`read_binary_files(..., include_paths=True)`),
    decoded images (`read_images(..., include_paths=True)`: decoded by Ray, so
    a bad file fails the read and EXIF rotation is not applied; bytes give
    exactly `capgen caption`'s captions) or paths every node can read (a
    `path` column). `column` picks the image column; by default the first of
    bytes, image, path. A `path` column, when present, names each row.

    `model`: a folder (or installed NAME, None for the default) every node
    can read, or `ship_model(folder)` (shipped for these `int8` and `fast_decoder`
    settings, or for any). `concurrency`: actors (or a (min, max)
    range for autoscaling); each takes `num_cpus` CPUs and that many encoder
    threads (at least one), and `num_gpus` GPUs (0: none; for a cluster whose
    actors should sit on GPU nodes).

    Lazy: nothing runs until the result is consumed, and then once.
    """
    check_batch_size(batch_size)
    options = DecodingOptions(
        beam_size=beam_size, max_length=max_length, length_penalty=length_penalty
    )
    if not isinstance(num_cpus, (int, float)) or isinstance(num_cpus, bool) or num_cpus <= 0:
        raise InputError(f"num_cpus must be a number above 0, got {num_cpus!r}")
    if not isinstance(num_gpus, (int, float)) or isinstance(num_gpus, bool) or num_gpus < 0:
        raise InputError(f"num_gpus must be a number of 0 or more, got {num_gpus!r}")
    if isinstance(model, ShippedModel):
        model.check_settings(int8=int8, fast_decoder=fast_decoder)
    # Only columns Ray knows without running the dataset (see the module docstring).
    known = dataset.columns(fetch_if_missing=False)
    image_column = _image_column(list(known), column) if known else column
    from ray.data import ActorPoolStrategy

    pool = (
        ActorPoolStrategy(min_size=concurrency[0], max_size=concurrency[1])
        if isinstance(concurrency, tuple)
        else ActorPoolStrategy(size=concurrency)
    )
    return dataset.map_batches(
        CaptionBatches,
        fn_constructor_kwargs={
            "model": model,
            "column": image_column,
            "options": options,
            "batch_size": batch_size,
            "int8": int8,
            "fast_decoder": fast_decoder,
        },
        batch_size=batch_size,
        batch_format="numpy",
        compute=pool,
        num_cpus=num_cpus,
        **({"num_gpus": num_gpus} if num_gpus else {}),
    )
