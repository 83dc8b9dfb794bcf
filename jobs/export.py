"""Export the encoder of a pretraining checkpoint to safetensors + the model config JSON.

    python -m jobs.export --checkpoint out/runs/RUN [--output out/runs/RUN/export]

``--checkpoint`` is a run directory (its latest checkpoint is used) or one checkpoint directory,
local or ``s3://``. The fp32 weights are consolidated with DeepSpeed's own ``zero_to_fp32``
(ZeRO 1-3) or read from the saved module (ZeRO-0); only the encoder is kept (SpectralGPT without
its decoder, SkySense's student without the teacher and heads). The result loads without pickle:

    >>> from models.registry import create
    >>> model = create("spectralgpt_tiny", weights="out/runs/RUN/export/spectralgpt_tiny.safetensors")
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from jobs.train_common import STATE_FILE, consolidated_state_dict, read_state
from pipeline.config import StorageConfig

log = logging.getLogger("skyray.export")

SPECTRALGPT_DECODER_PREFIXES = ("decoder_", "mask_token")


def encoder_state_dict(sd: dict[str, torch.Tensor], family: str) -> dict[str, torch.Tensor]:
    """The encoder's tensors from the trained module's state dict (see module docstring)."""
    if family == "skysense":
        return {k.removeprefix("student."): v for k, v in sd.items() if k.startswith("student.")}
    return {k: v for k, v in sd.items() if not k.startswith(SPECTRALGPT_DECODER_PREFIXES)}


def model_config(name: str, overrides: dict[str, Any]) -> Any:
    """Frozen dataclass config of the encoder preset (pretrainer-only overrides dropped)."""
    from models.registry import get_config

    if name.startswith("skysense"):
        from models.skysense import SkySenseConfig

        fields = {f.name for f in dataclasses.fields(SkySenseConfig)}
        overrides = {k: v for k, v in overrides.items() if k in fields}
    return get_config(name, **overrides), overrides


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
    from safetensors.torch import save_file

    from models.checkpoint import METADATA_CLASS, METADATA_CONFIG
    from pipeline.storage import filesystem

    storage = storage or StorageConfig()
    state = read_state(ckpt_dir)
    mcfg = state["config"]["model"]
    name, family = mcfg["name"], ("skysense" if mcfg["name"].startswith("skysense") else "spectralgpt")
    config, overrides = model_config(name, mcfg.get("overrides", {}))
    sd = encoder_state_dict(consolidated_state_dict(ckpt_dir), family)
    sd = {k: v.contiguous() for k, v in sd.items()}
    cfg_dict = dataclasses.asdict(config)
    meta = {
        "format": "pt",
        METADATA_CLASS: "SkySense" if family == "skysense" else "SpectralGPT",
        METADATA_CONFIG: json.dumps(cfg_dict, sort_keys=True),
    }
    info = {"model": name, "overrides": overrides, "config": cfg_dict, "step": state["step"],
            "source_checkpoint": str(ckpt_dir), "tensors": len(sd)}
    fs, out_path = filesystem(output, storage)
    fs.makedirs(out_path, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        st = Path(tmp, f"{name}.safetensors")
        save_file(sd, str(st), metadata=meta)
        js = Path(tmp, f"{name}.json")
        js.write_text(json.dumps(info, sort_keys=True, indent=1, default=str))
        for f in (st, js):
            fs.put_file(str(f), f"{out_path}/{f.name}")
    sep = "" if output.endswith("/") else "/"
    return {"weights": f"{output}{sep}{name}.safetensors", "config": f"{output}{sep}{name}.json"}


def export(
    checkpoint: str, output: str | None = None, storage: StorageConfig | None = None
) -> dict[str, str]:
    """Export ``checkpoint`` (a run: its latest) to ``output`` (default ``<run>/export``)."""
    storage = storage or StorageConfig()
    with tempfile.TemporaryDirectory() as tmp:
        local = _local_checkpoint(checkpoint, storage, tmp)
        if output is None:
            base = checkpoint.rstrip("/")
            run_dir = base if Path(local).resolve() != Path(base).resolve() else base.rsplit("/", 1)[0]
            output = f"{run_dir}/export"
        return export_checkpoint(local, output, storage)


def main(argv: list[str] | None = None) -> dict[str, str]:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--checkpoint", required=True, help="run directory or checkpoint directory (path or s3://)")
    p.add_argument("--output", help="output directory (default: <run>/export)")
    p.add_argument("--endpoint-url", help="S3 endpoint (default: AWS_ENDPOINT_URL)")
    a = p.parse_args(argv)
    out = export(a.checkpoint, a.output, StorageConfig(endpoint_url=a.endpoint_url))
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
