"""Artifacts to workers: described and sent as bytes by the controller, cached by sha256 on each worker.

With a shared file system (``CONVBENCH_SHARED_CACHE=1``) only their paths are sent.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from backends.base import Artifact
from harness.artifacts import file_sha256

# ---------------------------------------------------------------- controller side


def describe_artifact(artifact: Artifact, shared: bool) -> dict[str, Any]:
    """What a worker needs to find or rebuild an artifact: names, sha256s (and paths if shared)."""
    files = {}
    for role, path in (("model", artifact.path), ("input", artifact.input_path),
                       ("reference", artifact.reference_output_path)):
        entry = {"name": path.name, "sha256": artifact.sha256 if role == "model" else file_sha256(path)}
        if shared:
            entry["path"] = str(path)
        files[role] = entry
    return {"key": artifact.sha256, "workload_id": artifact.workload_id, "format": artifact.format,
            "layout": artifact.layout, "sha256": artifact.sha256, "shared": shared, "files": files}


def artifact_payload(artifact: Artifact) -> dict[str, Any]:
    return {"key": artifact.sha256, "data": {"model": artifact.path.read_bytes(),
                                             "input": artifact.input_path.read_bytes(),
                                             "reference": artifact.reference_output_path.read_bytes()}}


# ---------------------------------------------------------------- worker side


def worker_cache_dir() -> Path:
    explicit = os.environ.get("CONVBENCH_WORKER_CACHE")
    if explicit:
        return Path(explicit)
    from harness.artifacts import cache_root

    return cache_root() / "worker-artifacts"


class ArtifactUnavailable(RuntimeError):
    pass


def _cached_folder(desc: Mapping[str, Any]) -> Path | None:
    folder = worker_cache_dir() / desc["key"]
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    want = {role: (entry["name"], entry["sha256"]) for role, entry in desc["files"].items()}
    have = {role: tuple(value) for role, value in (meta.get("files") or {}).items()}
    return folder if have == want else None


def cached_keys(descs: list[dict[str, Any]]) -> list[str]:
    """Run on a worker (``client.run``): which of these artifacts its cache already holds."""
    return [d["key"] for d in descs if _cached_folder(d) is not None]


def _as_artifact(desc: Mapping[str, Any], paths: Mapping[str, Path]) -> Artifact:
    return Artifact(desc["workload_id"], desc["format"], paths["model"], paths["input"], paths["reference"],
                    desc["layout"], desc["sha256"])


def materialize(desc: Mapping[str, Any], payload: Mapping[str, Any] | None) -> Artifact:
    """The artifact as local files on this worker: shared path, cache hit, or written from bytes."""
    if desc.get("shared"):
        paths = {role: Path(entry["path"]) for role, entry in desc["files"].items()}
        for role, path in paths.items():
            if not path.is_file():
                raise ArtifactUnavailable(f"{path} is not on this worker: the shared cache "
                                          "(CONVBENCH_SHARED_CACHE) must be mounted at the same path on every host")
            if role == "model" and file_sha256(path) != desc["sha256"]:
                raise ArtifactUnavailable(f"{path} on this worker differs from the controller's (sha256)")
        return _as_artifact(desc, paths)
    folder = _cached_folder(desc)
    if folder is None:
        if payload is None:
            raise ArtifactUnavailable(f"artifact {desc['workload_id']} ({desc['format']}, sha256 "
                                      f"{desc['sha256'][:12]}) is neither cached on this worker nor shipped")
        root = worker_cache_dir()
        root.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f".{desc['key'][:16]}-", dir=root))
        try:
            for role, entry in desc["files"].items():
                data = payload["data"][role]
                if hashlib.sha256(data).hexdigest() != entry["sha256"]:
                    raise ArtifactUnavailable(f"{entry['name']} of {desc['workload_id']} arrived corrupted")
                (scratch / entry["name"]).write_bytes(data)
            meta = {"workload_id": desc["workload_id"], "format": desc["format"],
                    "files": {role: [e["name"], e["sha256"]] for role, e in desc["files"].items()}}
            (scratch / "meta.json").write_text(json.dumps(meta))
            folder = root / desc["key"]
            if folder.exists():  # a stale or concurrent copy: replace it
                shutil.rmtree(folder, ignore_errors=True)
            try:
                scratch.rename(folder)
            except OSError:  # another task won the race with the same bytes
                shutil.rmtree(scratch, ignore_errors=True)
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            raise
    return _as_artifact(desc, {role: folder / entry["name"] for role, entry in desc["files"].items()})
