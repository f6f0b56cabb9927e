"""Trial checkpoints wherever Ray Tune keeps them: a local or shared folder, or object storage (s3://, gs://).

The store records a checkpoint by the path Tune gives it: an absolute local path, or a path inside the bucket of
the sweep's experiment URI (`bucket/prefix/<sweep>/<trial>/checkpoint_000003`). Export, promotion and resume read
checkpoints through the same pyarrow filesystem layer Tune writes them with; a remote one is copied to a
temporary local folder for as long as it is used.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import pyarrow.fs as pafs


def filesystem(storage: str) -> pafs.FileSystem | None:
    """The pyarrow filesystem of a remote Tune storage or experiment URI (s3://, gs://); None for a local path.
    Credentials and endpoints come from the environment, as for Tune (AWS_ACCESS_KEY_ID, AWS_ENDPOINT_URL, ...)."""
    return pafs.FileSystem.from_uri(storage)[0] if "://" in storage else None


def exists(storage: str) -> Callable[[str], bool]:
    """A test for whether a checkpoint folder recorded under `storage` is still there."""
    remote = filesystem(storage)
    if remote is None:
        return os.path.isdir
    return lambda path: remote.get_file_info(path).type == pafs.FileType.Directory


@contextmanager
def local_copy(checkpoint: str, storage: str) -> Iterator[Path | None]:
    """The checkpoint as a folder on this machine (None when it is gone): itself when local, else a temporary
    download removed afterwards."""
    remote = filesystem(storage)
    if remote is None:
        yield Path(checkpoint) if checkpoint and Path(checkpoint).is_dir() else None
        return
    if not checkpoint or remote.get_file_info(checkpoint).type != pafs.FileType.Directory:
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="sweeper-checkpoint-") as folder:
        pafs.copy_files(checkpoint, folder, source_filesystem=remote, destination_filesystem=pafs.LocalFileSystem())
        yield Path(folder)
