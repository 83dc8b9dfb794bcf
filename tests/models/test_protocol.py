"""Every registered preset against the ``models.base`` protocol (timm ``tests/test_models.py`` style).

Presets larger than ``*_tiny`` run at depth 1 and a small input (``SMALL``): the protocol is the
same code path at every depth and size, and the whole file has to stay well under a minute on
2 CPU cores (skysense_1b / spectralgpt_huge at full depth are several GB and minutes per step).
Widths, heads and every other preset field stay as registered.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections import Counter

import pytest
import torch

from models.base import Encoder, Pretrainer
from models.layers import Block
from models.registry import create, create_pretrainer, get_preset, list_models

SMALL = {
    "spectralgpt": {"depth": 1, "decoder_depth": 1, "img_size": 16},
    "skysense": {"s2_depth": 1, "s1_depth": 1, "fusion_depth": 1, "img_size": 32, "n_lon": 2, "n_lat": 2},
}
#: pretrainer options that only bound the test's cost (pixel InfoNCE rows, projection width)
OPTIONS = {"spectralgpt": {}, "skysense": {"proj_dim": 16, "pixel_samples": 32}}
FAMILY_TINY = {"spectralgpt": "spectralgpt_tiny", "skysense": "skysense_tiny"}


def overrides(name: str) -> dict:
    return {} if name.endswith("_tiny") else SMALL[get_preset(name).family]


def make_batch(name: str, b: int = 2, seed: int = 0, **over) -> dict[str, torch.Tensor]:
    """A seeded batch of the family's pretraining inputs at the preset's (overridden) size."""
    preset = get_preset(name)
    cfg = preset.config
    size = over.get("img_size", overrides(name).get("img_size", cfg.img_size))
    g = torch.Generator().manual_seed(seed)
    if preset.family == "spectralgpt":
        return {"x": torch.randn(b, cfg.in_chans, size, size, generator=g)}
    t = 3
    s2_valid = torch.ones(b, t, dtype=torch.bool)
    s2_valid[0, -1] = False
    return {
        "s2": torch.randn(b, t, cfg.s2_in_chans, size, size, generator=g),
        "s2_doy": torch.randint(1, 367, (b, t), generator=g),
        "s2_valid": s2_valid,
        "s1": torch.randn(b, 2, cfg.s1_in_chans, size, size, generator=g),
        "s1_doy": torch.randint(1, 367, (b, 2), generator=g),
        "s1_valid": torch.ones(b, 2, dtype=torch.bool),
        "lonlat": torch.tensor([[11.5, 48.1], [-60.0, -3.0]])[:b],
    }


def build_pretrainer(name: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_pretrainer(name, **overrides(name), **OPTIONS[get_preset(name).family]).train()


# ---------------------------------------------------------------------------------------------
# every preset
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list_models())
def test_meta_construction_and_no_weight_decay_names_exist(name):
    """Full-size presets build on the meta device (nothing allocated); every name that
    ``no_weight_decay`` returns is a parameter of that module."""
    with torch.device("meta"):
        enc = create(name)
        pre = create_pretrainer(name)
    for module, kind in ((enc, Encoder), (pre, Pretrainer)):
        assert isinstance(module, kind), (name, type(module).__name__, kind.__name__)
        params = dict(module.named_parameters())
        assert all(p.is_meta for p in params.values())
        nwd = module.no_weight_decay()
        assert nwd and nwd <= set(params), sorted(nwd - set(params))


@pytest.mark.parametrize("name", list_models())
def test_forward_backward_and_grad_checkpointing_same_loss(name):
    """One training step with checkpointing off and on (same weights, same seed): the same loss
    and gradients; every trainable parameter gets a gradient, frozen ones (a teacher) none."""
    pre = build_pretrainer(name)
    batch = make_batch(name)
    results = []
    for enable in (False, True):
        pre.set_grad_checkpointing(enable)
        pre.zero_grad(set_to_none=True)
        torch.manual_seed(1)
        out = pre(batch)
        assert out["loss"].ndim == 0 and torch.isfinite(out["loss"])
        losses = {k: v for k, v in out.items() if k.startswith("loss")}
        assert len(losses) >= 2 and all(v.ndim == 0 for v in losses.values())
        out["loss"].backward()
        grads = {n: p.grad.clone() for n, p in pre.named_parameters() if p.grad is not None}
        results.append((losses, grads))
    (l0, g0), (l1, g1) = results
    for k in l0:
        torch.testing.assert_close(l1[k], l0[k], rtol=1e-5, atol=1e-6, msg=k)
    trainable = {n for n, p in pre.named_parameters() if p.requires_grad}
    assert set(g0) == set(g1) == trainable, sorted(trainable ^ set(g0))
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], rtol=1e-4, atol=1e-6, msg=n)
    pre.after_step(0, 10)  # the hook exists for every pretrainer and runs after a step


# ---------------------------------------------------------------------------------------------
# per family
# ---------------------------------------------------------------------------------------------


def _count_block_calls(module: torch.nn.Module, step) -> Counter:
    """How often each ``Block`` under ``module`` runs its forward during ``step()``."""
    calls: Counter = Counter()
    handles = [
        m.register_forward_pre_hook(lambda mod, args, n=n: calls.update([n]))
        for n, m in module.named_modules()
        if isinstance(m, Block)
    ]
    try:
        step()
    finally:
        for h in handles:
            h.remove()
    return calls


@pytest.mark.parametrize("family", sorted(FAMILY_TINY))
def test_grad_checkpointing_recomputes_every_trainable_block(family):
    """With checkpointing on, every block of the trained network runs twice per step (forward
    and recomputation in backward), once when off; the EMA teacher's blocks (no grad) once."""
    name = FAMILY_TINY[family]
    pre = build_pretrainer(name)
    batch = make_batch(name)

    def step():
        torch.manual_seed(1)
        pre(batch)["loss"].backward()

    counts = {}
    for enable in (False, True):
        pre.set_grad_checkpointing(enable)
        counts[enable] = _count_block_calls(pre, step)
    off, on = counts[False], counts[True]
    assert off and set(on) == set(off)
    for n in off:
        want = off[n] if n.startswith("teacher.") else 2 * off[n]
        assert on[n] == want, (n, off[n], on[n])
    assert any(not n.startswith("teacher.") for n in off)


def test_grad_checkpointing_recomputes_swin_window_blocks():
    """The SkySense high-resolution branch (Swin window blocks) and the rest of the encoder."""
    torch.manual_seed(0)
    model = create("skysense_tiny", hr_enabled=True).train()
    batch = {**make_batch("skysense_tiny"), "hr": torch.randn(2, 4, 64, 64)}

    def step():
        out = model.forward_features(batch)
        (out["dense"].square().mean() + out["levels"][0].mean()).backward()

    counts = {}
    for enable in (False, True):
        model.set_grad_checkpointing(enable)
        counts[enable] = _count_block_calls(model, step)
    stacks = {n.split(".")[0] for n in counts[False]}
    assert stacks == {"s2_encoder", "s1_encoder", "hr_encoder", "fusion_blocks"}
    assert counts[True] == Counter({n: 2 * c for n, c in counts[False].items()})


NO_DECAY = {
    "spectralgpt_tiny": {
        "pos_embed_spatial",
        "pos_embed_temporal",
        "decoder_pos_embed_spatial",
        "decoder_pos_embed_temporal",
        "mask_token",
    },
    "skysense_tiny": {
        "student.doy_embed.weight",
        "student.modality_embed",
        "student.fusion_token",
        "student.geo.prototypes",
        "heads.centres",
    },
}


@pytest.mark.parametrize("name", sorted(NO_DECAY))
def test_no_weight_decay_names_and_param_groups(name):
    """The exact ≥ 2-D parameters without decay per family, and the jobs' AdamW groups: no decay
    for exactly those plus the 1-D ones (biases, norms); the frozen teacher in no group."""
    from jobs.train.engine import param_groups

    pre = build_pretrainer(name)
    assert pre.no_weight_decay() == NO_DECAY[name]
    decay, no_decay = param_groups(pre, 0.05)
    names = {id(p): n for n, p in pre.named_parameters()}
    got = {names[id(p)] for p in no_decay["params"]}
    one_d = {n for n, p in pre.named_parameters() if p.requires_grad and p.ndim < 2}
    assert got == NO_DECAY[name] | one_d
    assert not {names[id(p)] for p in decay["params"]} & got
    assert {names[id(p)] for p in decay["params"]} | got == {
        n for n, p in pre.named_parameters() if p.requires_grad
    }


def test_skysense_hr_branch_position_bias_takes_no_decay():
    model = create("skysense_tiny", hr_enabled=True)
    cpb = {n for n, _ in model.named_parameters() if ".cpb." in n}
    assert len(cpb) == 6  # two stages of one window block, Linear(2, 256) + Linear(256, heads, bias=False)
    assert (
        model.no_weight_decay()
        == {"doy_embed.weight", "modality_embed", "fusion_token", "geo.prototypes"} | cpb
    )


# ---------------------------------------------------------------------------------------------
# the SkySense teacher
# ---------------------------------------------------------------------------------------------


def test_spectralgpt_after_step_changes_nothing():
    pre = build_pretrainer("spectralgpt_tiny")
    before = {k: v.clone() for k, v in pre.state_dict().items()}
    pre.after_step(0, 1)
    assert all(torch.equal(v, before[k]) for k, v in pre.state_dict().items())


# ---------------------------------------------------------------------------------------------
# init_weights under deepspeed.zero.Init (one single-process gloo world, in a subprocess)
# ---------------------------------------------------------------------------------------------

ZERO_INIT_SCRIPT = r"""
import json, os, platform, socket, sys, torch, deepspeed, torch.distributed as dist
s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
dist.init_process_group("gloo", rank=0, world_size=1)
torch.set_num_threads(1)
from jobs.train import engine
from models.registry import create_pretrainer
DS = {"train_batch_size": 1, "zero_optimization": {"stage": 3}}
real_gather = engine.init_gather
sizes, raw_rng = [], []


def gather(ps):  # build_partitioned's own gather, counting what it makes whole
    sizes.append(sum(p.ds_numel for p in ps))
    if not raw_rng:  # does DeepSpeed's gather itself draw from the global RNG here? (diagnostics)
        state = torch.get_rng_state()
        with deepspeed.zero.GatheredParameters(ps):
            raw_rng.append(not torch.equal(state, torch.get_rng_state()))
        raw_rng.append(not torch.equal(state, torch.get_rng_state()))
        torch.set_rng_state(state)
    return real_gather(ps)


engine.init_gather = gather
out = {"_machine": [platform.machine(), platform.processor(), torch.__version__, deepspeed.__version__,
                    torch.backends.cpu.get_cpu_capability(), os.cpu_count()]}
for name, over in json.loads(sys.argv[1]).items():
    torch.manual_seed(0)
    plain = create_pretrainer(name, **over)
    torch.manual_seed(1)
    plain.init_weights()
    after = torch.rand(4)
    want = {k: v.clone() for k, v in plain.named_parameters()}
    del plain
    sizes.clear()

    def build():  # a different construction seed (7): init_weights alone must set every value
        torch.manual_seed(7)
        built = create_pretrainer(name, **over)
        torch.manual_seed(1)  # what build_partitioned's init_weights then draws from
        return built

    m = engine.build_partitioned(build, DS)
    params = dict(m.named_parameters())
    res = {"partitioned": all(hasattr(p, "ds_tensor") and p.numel() == 0 for p in params.values())}
    for k in ("first", "again"):
        if k == "again":
            torch.manual_seed(1)
            m.init_weights(gather)
        res["same_rng_after_" + k] = torch.equal(torch.rand(4), after)
        res["partitioned_after_" + k] = all(p.numel() == 0 for p in params.values())
        with deepspeed.zero.GatheredParameters(list(params.values())):
            res[k] = sorted(n for n, p in params.items() if not torch.equal(p, want[n]))
            if res[k]:  # diagnostics: how far off, and whether the values are merely shifted
                p, w = params[res[k][0]], want[res[k][0]]
                res[k + "_example"] = [res[k][0], p.flatten()[:3].tolist(), w.flatten()[:3].tolist()]
            if hasattr(m, "teacher"):
                res["teacher_differs"] = sorted(
                    n for n, p in m.teacher.named_parameters()
                    if not torch.equal(p, params["student." + n])
                )
    res["max_gathered"] = max(sizes)
    res["largest_submodule"] = max(
        sum(p.ds_numel for p in mod.parameters(recurse=False)) for mod in m.modules()
    )
    res["model_numel"] = sum(p.ds_numel for p in params.values())
    res["deepspeed_gather_draws"] = raw_rng
    out[name] = res
print("RESULT " + json.dumps(out))
"""


@pytest.fixture(scope="module")
def zero_init_results():
    pytest.importorskip("deepspeed")
    spec = {}
    for name in list_models():
        family = get_preset(name).family
        spec[name] = {**overrides(name), **OPTIONS[family]}
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run(
        [sys.executable, "-c", ZERO_INIT_SCRIPT, json.dumps(spec)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    return json.loads(lines[-1].removeprefix("RESULT "))


@pytest.mark.parametrize("name", list_models())
def test_init_weights_idempotent_under_zero_init(zero_init_results, name):
    """Built under ``deepspeed.zero.Init`` (every parameter partitioned from the start, the SkySense
    teacher included), then ``init_weights`` gathering one submodule at a time (as
    ``build_partitioned`` does) with seed 1 gives exactly the plain build's ``init_weights`` with
    seed 1, twice in a row; the teacher equals the student; no gather holds more than the largest
    submodule's own parameters, and everything is partitioned again afterwards."""
    res = zero_init_results[name]
    assert res["partitioned"] and res["partitioned_after_first"] and res["partitioned_after_again"]
    why = {"machine": zero_init_results["_machine"], **res}  # on failure: what to look at first
    assert res["first"] == [] and res["again"] == [], why
    assert res["same_rng_after_first"] and res["same_rng_after_again"], why
    assert res.get("teacher_differs", []) == []
    assert res["max_gathered"] <= res["largest_submodule"] < res["model_numel"] / 2, res


@pytest.mark.parametrize("name", ["spectralgpt_tiny", "skysense_tiny"])
def test_init_weights_gathers_one_submodule_at_a_time(name):
    """``init_weights(gather)`` passes every trainable parameter through ``gather`` (so under ZeRO-3
    none is left uninitialised), each call at most one submodule's own parameters (the model is
    never gathered whole), the SkySense teacher never (it is synced on partitions); the values and
    the RNG stream are those of ``init_weights()``."""
    model = build_pretrainer(name)
    torch.manual_seed(1)
    model.init_weights()
    want = {k: v.clone() for k, v in model.state_dict().items()}
    after = torch.rand(4)
    calls: list[list[torch.nn.Parameter]] = []

    def gather(ps):
        calls.append(list(ps))
        return contextlib.nullcontext()

    torch.manual_seed(1)
    model.init_weights(gather)
    assert torch.equal(torch.rand(4), after)  # the same RNG draws, in the same order
    assert all(torch.equal(v, want[k]) for k, v in model.state_dict().items())
    seen = {id(p) for ps in calls for p in ps}
    names = {id(p): n for n, p in model.named_parameters()}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable <= seen, sorted(names[i] for i in trainable - seen)
    assert not any(names[i].startswith("teacher") for i in seen)
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    total = sum(p.numel() for p in model.parameters())
    assert max(sum(p.numel() for p in ps) for ps in calls) <= largest < total / 4

