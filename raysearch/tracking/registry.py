"""The MLflow model registry for `raysearch optimize`: one registered model per optimization, a
version per qualifying candidate (its ONNX file as an MLflow ``onnx`` model), aliases ``best``,
``fastest`` and ``rank-N``."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from raysearch.records import names as obj
from raysearch.records.results import TrialRow

if TYPE_CHECKING:  # pragma: no cover
    from mlflow.tracking import MlflowClient

MLFLOW_MODEL_DIR = "mlflow_model"


def _log_mlflow_model(client: "MlflowClient", row: TrialRow) -> None:
    """The candidate's ONNX file as an MLflow model (the onnx flavor) in its run, so that
    ``models:/NAME@best`` downloads (and ``mlflow.pyfunc.load_model`` loads) it."""
    import tempfile

    import mlflow.onnx
    import onnx

    assert row.onnx is not None, "a registered candidate has its ONNX file (from pick)"
    with tempfile.TemporaryDirectory() as tmp:
        mlflow.onnx.save_model(onnx.load(row.onnx), f"{tmp}/model", save_as_external_data=False,
                               onnx_execution_providers=["CPUExecutionProvider"],
                               pip_requirements=["onnxruntime", "numpy"])
        client.log_artifacts(row.run_id, f"{tmp}/model", artifact_path=MLFLOW_MODEL_DIR)


def register(client: "MlflowClient", name: str, quals: list[TrialRow], arch: str) -> str:
    """One registered model per optimization; a version per qualifying candidate (best first),
    aliases ``best`` (highest IoU), ``fastest`` and ``rank-N``. A candidate registered by an
    earlier run of the same optimization keeps its version; versions no longer qualifying on the
    front are tagged ``current=false``."""
    from mlflow.exceptions import MlflowException

    model = f"raysearch-{name}"
    try:
        client.get_registered_model(model)
    except MlflowException:
        client.create_registered_model(model, tags={obj.TAG_OPTIMIZATION: name, "arch": arch},
                                       description=f"Candidates of `raysearch optimize` {name} that meet the "
                                                   f"requirement, as ONNX files.")
    versions = client.search_model_versions(f"name='{model}'")
    existing = {v.run_id: v.version for v in versions}
    current = {r.run_id for r in quals}
    for v in versions:  # an earlier run's candidate that a better one has since pushed off the front
        if v.run_id not in current:
            client.set_model_version_tag(model, v.version, "current", "false")
    for alias in set(client.get_registered_model(model).aliases) - {"best", "fastest"}:
        client.delete_registered_model_alias(model, alias)
    for rank, r in enumerate(quals, 1):
        version = existing.get(r.run_id)
        if version is None:
            _log_mlflow_model(client, r)
            mv = client.create_model_version(
                model, source=f"runs:/{r.run_id}/{MLFLOW_MODEL_DIR}", run_id=r.run_id,
                tags={obj.IOU.name: f"{r.iou:.4f}", obj.LATENCY_MS.name: f"{r.latency_ms:.3f}", "spec": r.name,
                      "precision": r.precision, obj.TAG_STAGE: r.stage},
                description=f"{r.name}: IoU {r.iou:.4f}, {r.latency_ms:.2f} ms")
            version = mv.version
        r.model_version = int(version)
        client.set_model_version_tag(model, version, "current", "true")
        client.set_registered_model_alias(model, f"rank-{rank}", version)
    client.set_registered_model_alias(model, "best", str(quals[0].model_version))
    fastest = min(quals, key=lambda r: r.latency_ms if r.latency_ms is not None else math.inf)
    client.set_registered_model_alias(model, "fastest", str(fastest.model_version))
    return model
