"""capgen on Ray (`pip install 'capgen[ray]'`): caption datasets with Ray Data, serve with Ray Serve.

    import ray
    from capgen.ray import caption_dataset, ship_model

    ray.init(address="auto")
    images = ray.data.read_binary_files("s3://bucket/photos/", include_paths=True)
    captions = caption_dataset(images, ship_model("mymodel/"), concurrency=4, int8=True)
    captions.write_parquet("s3://bucket/captions/")

Each actor loads one `Captioner` once and keeps it; a bad image is a row
with `error`, never a failed job. The model folder reaches the actors either
as a path every node can read (shared storage) or through `ship_model`:
put once into Ray's object store and written per node into a folder verified
against the manifest's sha256s (model_store.py). `capgen ray caption` is the
command line of the same job; `capgen.ray.serve` the Ray Serve deployment.

Names are imported lazily so `import capgen.ray` costs nothing until used.
"""

from __future__ import annotations

from typing import Any

__all__ = ["COLUMNS", "ShippedModel", "caption_dataset", "ship_model"]


def __getattr__(name: str) -> Any:
    if name == "caption_dataset":
        from capgen.ray.data import caption_dataset

        return caption_dataset
    if name in ("ShippedModel", "ship_model"):
        from capgen.ray import model_store

        return getattr(model_store, name)
    if name == "COLUMNS":
        from capgen.ray.rows import COLUMNS

        return COLUMNS
    raise AttributeError(f"module 'capgen.ray' has no attribute {name!r}")
