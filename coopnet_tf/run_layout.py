"""Names inside a training run directory and an export directory, defined once.

``model_dir`` of `training.loop.train_and_evaluate`::

    operative_config.gin    the gin config the run used (written after the first step)
    checkpoints/            the latest checkpoints (tf.train.CheckpointManager)
    best/                   the checkpoint with the best validation metric
    summaries/              TensorBoard event files
    eval_<step>.json        one validation result per evaluation
    workertemp/<task>/      non-chief workers' throw-away writes (multi-worker only)

An export directory holds ``<name>/<version>/saved_model.pb`` (TF Serving layout), name
in `specs.EXPORT_DEPTH` / ``EXPORT_POSE`` / ``EXPORT_FLOW``. Pure Python (no TensorFlow).
"""
import os
from typing import Optional

OPERATIVE_CONFIG = "operative_config.gin"
CHECKPOINT_SUBDIR = "checkpoints"
BEST_SUBDIR = "best"
SUMMARY_SUBDIR = "summaries"
WORKER_TEMP_SUBDIR = "workertemp"
EVAL_JSON_GLOB = "eval_*.json"
SAVED_MODEL_FILE = "saved_model.pb"


def eval_json(model_dir: str, step: int) -> str:
    """``<model_dir>/eval_<step>.json``."""
    return os.path.join(model_dir, f"eval_{int(step)}.json")


def checkpoint_subdir(which: str) -> str:
    """Sub-directory of the ``latest`` or the ``best`` checkpoints."""
    if which not in ("latest", "best"):
        raise ValueError(f"checkpoint must be 'latest' or 'best', got {which!r}")
    return CHECKPOINT_SUBDIR if which == "latest" else BEST_SUBDIR


def find_saved_model(path: str) -> Optional[str]:
    """``path`` if it is a SavedModel, else its highest numbered version sub-directory
    holding one (TF Serving layout), else None."""
    if not os.path.isdir(path):
        return None
    if os.path.isfile(os.path.join(path, SAVED_MODEL_FILE)):
        return path
    versions = [d for d in os.listdir(path) if d.isdigit()
                and os.path.isfile(os.path.join(path, d, SAVED_MODEL_FILE))]
    return os.path.join(path, max(versions, key=int)) if versions else None


def resolve_saved_model_dir(path: str) -> str:
    """Like `find_saved_model`, but raises FileNotFoundError naming ``path``."""
    found = find_saved_model(path)
    if found is None:
        raise FileNotFoundError(
            f"no {SAVED_MODEL_FILE} in {path} or its numbered subdirectories")
    return found
