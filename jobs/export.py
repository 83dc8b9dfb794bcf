"""Export the encoder of a pretraining checkpoint to safetensors + the model config JSON.

    python -m jobs.export --checkpoint out/runs/RUN [--output out/runs/RUN/export] [--endpoint-url URL]

``--checkpoint`` is a run directory (its latest checkpoint is used) or one checkpoint directory,
local or ``s3://``. The fp32 weights are consolidated with DeepSpeed's own ``zero_to_fp32``
(ZeRO 1-3) or read from the saved module (ZeRO-0); only the encoder is kept (the family table's
``encoder_state_dict``: SpectralGPT without its decoder, SkySense's student without the teacher and
heads), loaded into the registry's encoder (strict: every tensor accounted for) and written by
``models.checkpoint.export_safetensors``. The result loads without pickle:

    >>> from models.registry import create
    >>> model = create("spectralgpt_tiny", weights="out/runs/RUN/export/spectralgpt_tiny.safetensors")
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from pydantic import Field

from jobs import cli
from jobs.train.engine import STATE_FILE, consolidated_state_dict, read_state
from jobs.train.family import family_of
from pipeline.config import StorageConfig, Strict
from pipeline.storage import join

log = logging.getLogger("skyray.export")


class ExportConfig(Strict):
    #: a run directory (its latest checkpoint) or one checkpoint directory, local or ``s3://``
    checkpoint: str
    #: output directory (default: ``<run>/export``)
    output: str | None = None
    storage: StorageConfig = Field(default_factory=StorageConfig)


def model_config(name: str, overrides: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """Frozen dataclass config of the encoder preset and the overrides it takes (pretrainer
    options, e.g. SkySense's ``proj_dim``, dropped)."""
    from models.registry import get_config, split_overrides

    enc, _ = split_overrides(name, overrides)
    return get_config(name, **enc), enc


def _local_checkpoint(uri: str, storage: StorageConfig, tmp: str) -> str:
    """A local directory holding the checkpoint ``uri`` (a run dir -> its latest checkpoint)."""
    from pipeline.storage import filesystem, scheme_of

    fs, path = filesystem(uri, storage)
    if not fs.exists(f"{path}/{STATE_FILE}"):
        cands = [p for p in fs.ls(path, detail=False) if fs.exists(f"{p}/{STATE_FILE}")]
        if not cands:
            raise FileNotFoundError(f"no checkpoint (a directory with {STATE_FILE}) under {uri!r}")
        steps = {p: json.loads(fs.cat_file(f"{p}/{STATE_FILE}"))["step"] for p in cands}
        path = max(cands, key=lambda p: (steps[p], p))
    if scheme_of(uri) == "file":
        return path
    dest = os.path.join(tmp, "ckpt")
    fs.get(path.rstrip("/") + "/", dest, recursive=True)
    return dest


def export_checkpoint(ckpt_dir: str, output: str, storage: StorageConfig | None = None) -> dict[str, str]:
    """Write ``<output>/<model>.safetensors`` and ``<output>/<model>.json`` from a local
    checkpoint directory; returns their URIs."""
    from models.checkpoint import export_safetensors
    from models.registry import create
    from pipeline.storage import filesystem

    storage = storage or StorageConfig()
    state = read_state(ckpt_dir)
    mcfg = state["config"]["model"]
    name = mcfg["name"]
    config, overrides = model_config(name, mcfg.get("overrides", {}))
    sd = family_of(name).encoder_state_dict(consolidated_state_dict(ckpt_dir))
    with torch.device("meta"):  # the encoder's names and class, no memory
        encoder = create(name, **overrides)
    unknown = sorted(set(sd) - set(encoder.state_dict()))
    if unknown:
        raise ValueError(f"checkpoint tensors the {name} encoder does not have: {unknown[:5]}")
    info = {"model": name, "overrides": overrides, "config": dataclasses.asdict(config),
            "step": state["step"], "source_checkpoint": str(ckpt_dir), "tensors": len(sd)}
    fs, out_path = filesystem(output, storage)
    fs.makedirs(out_path, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        st = export_safetensors(encoder, Path(tmp, f"{name}.safetensors"), config, state_dict=sd)
        js = Path(tmp, f"{name}.json")
        js.write_text(json.dumps(info, sort_keys=True, indent=1, default=str))
        for f in (st, js):
            fs.put_file(str(f), f"{out_path}/{f.name}")
    return {"weights": join(output, f"{name}.safetensors"), "config": join(output, f"{name}.json")}


def run(cfg: ExportConfig) -> dict[str, str]:
    """Export ``cfg.checkpoint`` (a run: its latest) to ``cfg.output`` (default ``<run>/export``)."""
    with tempfile.TemporaryDirectory() as tmp:
        local = _local_checkpoint(cfg.checkpoint, cfg.storage, tmp)
        output = cfg.output
        if output is None:
            base = cfg.checkpoint.rstrip("/")
            run_dir = base if Path(local).resolve() != Path(base).resolve() else base.rsplit("/", 1)[0]
            output = f"{run_dir}/export"
        return export_checkpoint(local, output, cfg.storage)


def main(argv: list[str] | None = None) -> int:
    return cli.run_job(ExportConfig, run, argv, aliases={
        "--checkpoint": cli.Alias("checkpoint", "run directory or checkpoint directory (path or s3://)"),
        "--output": cli.Alias("output", "output directory (default: <run>/export)"),
        "--endpoint-url": cli.Alias("storage.endpoint_url", "S3 endpoint (default: AWS_ENDPOINT_URL)"),
    })


if __name__ == "__main__":
    raise SystemExit(main())
