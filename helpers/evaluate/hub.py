"""Find a Hugging Face model for the detectors: a local copy, the hub cache, or the
hub itself, and a clear error when none is reachable.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from huggingface_hub import constants, snapshot_download

from helpers.core.models import ModelNotAvailable, resolve


def hub_reachable(timeout: float = 3.0) -> bool:
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def locate(spec: str, revision: str | None = None) -> str:
    """A local path for `spec` (itself, its HUMANIZER_ASSETS copy, or the Hugging Face cache at
    `revision`), or the hub id when the hub answers. Fails fast and plainly otherwise (no minute
    of retries)."""
    path = resolve(spec)
    if Path(path).exists():
        return path
    try:
        return snapshot_download(spec, revision=revision, local_files_only=True)
    except Exception:  # noqa: BLE001 - not in the cache
        pass
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False")
    if offline or not hub_reachable():
        why = "HF_HUB_OFFLINE is set" if offline else "the Hugging Face hub cannot be reached"
        raise ModelNotAvailable(
            f"{spec!r} is not available: it is not a local path, not in HUMANIZER_ASSETS "
            f"(models/{spec.split('/')[-1]}) nor in the Hugging Face cache, and {why}. "
            f"On a connected machine run `hf download {spec}` once, or copy it to "
            f"$HUMANIZER_ASSETS/models/{spec.split('/')[-1]}.")
    return spec
