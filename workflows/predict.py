"""Batch prediction with Ray Data: every video under a folder (or listed in a CSV) -> one Parquet file.

    python -m workflows.predict --model models:/vidssl-demo-primary/latest --videos data/synth \
        --out predictions.parquet [--top-k 5] [--all-probs] [--overwrite]

One row per video: path, label (the top class), confidence, top_labels / top_probs (best first), with
--all-probs the full probability vector `probs` (class order in the file's `vidssl.classes` metadata: soft
labels for an offline pseudo-labeler), the model spec, the exact model it resolved to (model_uri,
model_version, model_id) and `error`: null, or why the video could not be read (its other columns null).
The file is written to a temporary name and renamed into place, and an existing --out is never replaced
without --overwrite.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ssl_core.data.manifest import VIDEO_EXTENSIONS
from ssl_core.user_errors import UserError, read_text, reports_user_errors
from workflows.console import terminal
from workflows.runtime.inference import (
    InferenceError,
    InferenceModel,
    add_scoring_args,
    load_for_inference,
    score_videos,
)
from workflows.runtime.ray_session import init_ray

log = logging.getLogger("vidssl.predict")


class InputError(UserError, ValueError):
    """Bad --videos or --out; the message names the path."""


def csv_path_column(source: Path) -> list[str]:
    """The non-empty values of a CSV's `path` column, as written (header names may carry spaces)."""
    reader = csv.DictReader(io.StringIO(read_text(source, InputError), newline=""))
    header = [h.strip() for h in reader.fieldnames or []]
    if "path" not in header:
        raise InputError(f"{source}: header {header} has no 'path' column")
    reader.fieldnames = header
    return [value for row in reader if (value := (row.get("path") or "").strip())]


def list_videos(videos: str) -> list[str]:
    """Absolute paths: the `path` column of a CSV (relative to the CSV's folder), or every video file with a
    VIDEO_EXTENSIONS suffix under a folder, recursively (hidden files and folders skipped), sorted."""
    source = Path(videos).expanduser().resolve()
    if source.is_file() and source.suffix.lower() == ".csv":
        # A listed file that is missing becomes a row with an error, like any unreadable video.
        paths = [os.path.normpath(source.parent / p) for p in csv_path_column(source)]
    elif source.is_dir():
        paths = sorted(
            str(p) for p in source.rglob("*")
            if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS
            and not any(part.startswith(".") for part in p.relative_to(source).parts)
        )
    else:
        raise InputError(f"{videos}: not a folder nor a .csv file")
    if not paths:
        raise InputError(f"{videos}: no videos ({', '.join(sorted(VIDEO_EXTENSIONS))})")
    return paths


def output_schema(loaded: InferenceModel, all_probs: bool) -> pa.Schema:
    fields = [
        pa.field("path", pa.string()),
        pa.field("label", pa.string()),
        pa.field("confidence", pa.float32()),
        pa.field("top_labels", pa.list_(pa.string())),
        pa.field("top_probs", pa.list_(pa.float32())),
        *([pa.field("probs", pa.list_(pa.float32()))] if all_probs else []),
        pa.field("model", pa.string()),
        pa.field("model_uri", pa.string()),
        pa.field("model_version", pa.string()),
        pa.field("model_id", pa.string()),
        pa.field("error", pa.string()),
    ]
    metadata = {"vidssl.classes": json.dumps(loaded.classes), "vidssl.source": json.dumps(loaded.source),
                "vidssl.meta": json.dumps(loaded.meta)}
    return pa.schema(fields, metadata=metadata)


def prediction_table(
    batch: dict[str, np.ndarray], loaded: InferenceModel, top_k: int, schema: pa.Schema
) -> pa.Table:
    """Output rows for one batch of scored videos (see score_videos)."""
    classes = np.array(loaded.classes, dtype=object)
    probs = batch["probs"]
    ok = np.array([not e for e in batch["error"]], dtype=bool)
    k = min(top_k, len(classes))
    top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    top_probs = np.take_along_axis(probs, top, axis=1)

    def where_ok(values: list[Any]) -> list[Any]:
        return [v if good else None for v, good in zip(values, ok, strict=True)]

    n = len(probs)
    src = loaded.source
    columns: dict[str, list[Any]] = {
        "path": [str(p) for p in batch["path"]],
        "label": where_ok([str(c) for c in classes[top[:, 0]]]),
        "confidence": where_ok(top_probs[:, 0].tolist()),
        "top_labels": where_ok([list(classes[row]) for row in top]),
        "top_probs": where_ok(top_probs.tolist()),
        "probs": where_ok(probs.tolist()),
        "model": [src["spec"]] * n,
        "model_uri": [src["uri"]] * n,
        "model_version": [src["version"]] * n,
        "model_id": [src["model_id"]] * n,
        "error": [str(e) if e else None for e in batch["error"]],
    }
    return pa.table({name: columns[name] for name in schema.names}, schema=schema)


def write_predictions(ds: Any, out: Path, loaded: InferenceModel, top_k: int, all_probs: bool,
                      overwrite: bool) -> tuple[int, int]:
    """Stream the scored dataset into `out` atomically; returns (videos, errors)."""
    schema = output_schema(loaded, all_probs)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    rows = errors = 0
    try:
        with pq.ParquetWriter(tmp, schema) as writer:
            for batch in ds.iter_batches(batch_size=1024, batch_format="numpy"):
                table = prediction_table(batch, loaded, top_k, schema)
                writer.write_table(table)
                rows += table.num_rows
                errors += table.num_rows - table["error"].null_count
    except BaseException:
        tmp.unlink(missing_ok=True)  # never leave half a file behind
        raise
    if out.exists() and not overwrite:  # it appeared while we ran: still not ours to replace
        raise InputError(f"{out} appeared while predicting; the predictions are in {tmp}")
    os.replace(tmp, out)
    return rows, errors


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vidssl predict", description=__doc__.splitlines()[0])
    parser.add_argument("--videos", required=True, metavar="DIR|CSV",
                        help="a folder (every video file under it, recursively) or a CSV with a path column "
                             "(relative paths are relative to the CSV)")
    parser.add_argument("--out", required=True, metavar="FILE.parquet")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    parser.add_argument("--top-k", type=int, default=5, help="classes listed per video (default 5)")
    parser.add_argument("--all-probs", action="store_true", help="add the full probability vector (soft labels)")
    add_scoring_args(parser, clips=4, crops=1,
                     clips_help="uniformly spaced clips per video (default 4, with 1 crop: a 7.5x cheaper view "
                                "set than evaluate's 10 clips x 3 crops, for bulk prediction; raise both for best "
                                "accuracy)")
    parser.add_argument("--verbose", action="store_true",
                        help="also print what Ray, Ray Data and MLflow log")
    return parser


@reports_user_errors(InferenceError)
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with terminal.session(args.verbose):
        out = Path(args.out).expanduser().resolve()
        if min(args.top_k, args.clips, args.crops, args.batch_size) < 1:
            raise InputError("--top-k, --clips, --crops and --batch-size must be >= 1")
        if out.is_dir():
            raise InputError(f"--out {out} is a directory; name a .parquet file")
        if out.exists() and not args.overwrite:
            raise InputError(f"--out {out} exists; pass --overwrite to replace it")
        if not out.parent.is_dir():
            raise InputError(f"--out {out}: folder {out.parent} does not exist")
        paths = list_videos(args.videos)
        loaded = load_for_inference(args.model, args.tracking_uri, trust_pickle=args.trust_pickle)
        init_ray()
        ds = score_videos([{"path": p, "label": -1} for p in paths], loaded, clips=args.clips, crops=args.crops,
                          batch_size=args.batch_size, decode_cpus=args.decode_cpus, actors=args.actors)
        rows, errors = write_predictions(ds, out, loaded, args.top_k, args.all_probs, args.overwrite)
        src = loaded.source
        resolved = f"version {src['version']} of {src['name']}" if src["name"] else src["uri"]
        print(f"{rows} videos -> {out} ({errors} unreadable, see its error column); model {src['spec']} ({resolved})")
        return 0


if __name__ == "__main__":
    sys.exit(main())
