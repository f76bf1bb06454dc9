"""rtdetrv2_np.convert: official lyuwenyu/RT-DETR checkpoints -> hub names -> a model that computes what transformers
computes. No torch: the official-layout checkpoints in tests/fixtures/official/ (its README) were written by
tools/make_official_pth.py, whose inverse mapping is written there independently of official.RULES and was checked
against the official model code (official_keys.json.gz holds the official model classes' own state-dict names,
shapes and dtypes of the five published architectures)."""

import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_close

from rtdetrv2_np import load_model
from rtdetrv2_np.model.config import variant_config
from rtdetrv2_np.convert import convert, save_converted
from rtdetrv2_np.errors import RTDetrError
from rtdetrv2_np.official import RULES, compare_anchors, infer_config, official_to_hf, rename_official
from rtdetrv2_np.postprocess import COCO_NAMES
from rtdetrv2_np.pth import load_pth
from rtdetrv2_np.weights import CONFIG_METADATA_KEY, expected_shapes, read_safetensors

ROOT = Path(__file__).resolve().parents[1]
OFFICIAL = ROOT / "tests" / "fixtures" / "official"
REFERENCE = ROOT / "tests" / "fixtures" / "reference"
PTH_FIXTURES = ROOT / "tests" / "fixtures" / "pth"
# The NumPy model against transformers' recorded outputs of the same tiny weights: float32 GEMMs in another summation
# order differ by ~1e-6 here (measured <= 1e-6); 1e-4 is the package's bound for final logits and boxes (see
# test_model.py) and is far below what one wrongly mapped tensor does (O(0.1) and more).
OUTPUT_ATOL = 1e-4
# State-dict key counts of the official models of the five released configurations (lyuwenyu/RT-DETR
# rtdetrv2_pytorch at 068dfde, num_batches_tracked and the anchor buffers included), as listed by
# tools/make_official_pth.py --official-src in tests/fixtures/official/official_keys.json.gz.
OFFICIAL_KEY_COUNTS = {"r18vd": 538, "r34vd": 665, "r50vd_m": 768, "r50vd": 744, "r101vd": 999}


def official_listing():
    return json.loads(gzip.decompress((OFFICIAL / "official_keys.json.gz").read_bytes()))


def shaped_like(listing):
    """{official name: array} with the listed shapes and dtypes, without memory (zero-stride views), except the
    num_points_scale buffers that the architecture is read from (1/4 each: 4 points per level)."""
    out = {}
    for name, shape, dtype in listing:
        if name.endswith("num_points_scale"):
            out[name] = np.full(shape, 0.25, np.float32)
        else:
            out[name] = np.broadcast_to(np.zeros((), dtype), shape)
    return out


def run_convert(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "rtdetrv2_np.convert", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})


# ---------------------------------------------------------------------------------------------------------------
# The rule table on the five published architectures
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", list(OFFICIAL_KEY_COUNTS))
def test_rules_map_every_official_tensor_of_the_published_architectures(variant):
    listing = official_listing()[variant]
    assert len(listing) == OFFICIAL_KEY_COUNTS[variant]
    state_dict = shaped_like(listing)
    tensors, aside = rename_official(state_dict, variant)
    cfg, found, how = infer_config(tensors, source=variant)
    assert found == variant and how == "inferred from the tensor shapes"
    want = expected_shapes(cfg)
    assert sorted(tensors) == sorted(want), (set(tensors) ^ set(want))
    for name, shape in want.items():
        assert tuple(tensors[name].shape) == tuple(shape), name
    assert sorted(aside) == ["decoder.anchors", "decoder.valid_mask"]
    dropped = [n for n, *_ in listing if n.endswith("num_batches_tracked")]
    fused = [n for n, *_ in listing if n.endswith(("in_proj_weight", "in_proj_bias"))]
    # every official tensor is accounted for: renamed 1:1, split into three, dropped, or set aside
    assert len(tensors) == len(listing) - len(dropped) - 2 + 2 * len(fused)
    assert cfg.decoder_eval_idx == (2 if variant == "r50vd_m" else -1)      # official eval_idx of r50vd_m only
    assert cfg.id2label == dict(enumerate(COCO_NAMES)) and cfg.method == "bilinear"
    if variant == "r18vd":
        # the hub file's 529 keys = these + the 46 num_batches_tracked of the non-backbone BatchNorms (notes §0)
        assert len(want) + 46 == 529


def test_every_rule_is_used():
    names = [n for listing in official_listing().values() for n, *_ in listing]
    import re
    unused = [p for p, _, _ in RULES if not any(re.fullmatch(p, n) for n in names)]
    assert unused == [r"decoder\.tgt_embed\.weight"]       # learn_query_content: no published model has it


def test_in_proj_is_split_q_k_v_by_rows():
    d = 4
    w = np.arange(3 * d * d, dtype=np.float32).reshape(3 * d, d)            # rows [q; k; v]
    b = np.arange(3 * d, dtype=np.float32)
    tensors, _ = rename_official({"decoder.decoder.layers.1.self_attn.in_proj_weight": w,
                                  "decoder.decoder.layers.1.self_attn.in_proj_bias": b,
                                  "encoder.encoder.0.layers.0.self_attn.in_proj_weight": w})
    p = "model.decoder.layers.1.self_attn."
    for i, part in enumerate("qkv"):
        assert np.array_equal(tensors[f"{p}{part}_proj.weight"], w[i * d:(i + 1) * d])
        assert np.array_equal(tensors[f"{p}{part}_proj.bias"], b[i * d:(i + 1) * d])
        assert np.array_equal(tensors[f"model.encoder.encoder.0.layers.0.self_attn.{part}_proj.weight"],
                              w[i * d:(i + 1) * d])


def test_a_key_no_rule_covers_is_named():
    with pytest.raises(RTDetrError, match=r"no conversion rule for the tensor 'decoder\.extra_head\.weight'"):
        rename_official({"decoder.enc_score_head.bias": np.zeros(80), "decoder.extra_head.weight": np.zeros(3)},
                        "ckpt.pth")


def test_an_architecture_that_is_not_published_is_refused_without_config():
    sd = load_pth(OFFICIAL / "tiny_basic" / "tiny_basic.pth")
    tensors, _ = rename_official(sd)
    with pytest.raises(RTDetrError, match=r"not one of the published architectures r18vd, r34vd, r50vd_m, r50vd, "
                                          r"r101vd; put a config.json describing it beside the file"):
        infer_config(tensors, source="tiny.pth")


def test_sampling_points_per_level_are_read_from_the_checkpoint():
    # the r18vd "sp1" ablation checkpoint (num_points [1, 1, 1]): n_points_scale holds 1/1 three times
    state_dict = shaped_like(official_listing()["r18vd"])
    for name in [n for n in state_dict if "cross_attn" in n]:
        rows = {"sampling_offsets": 8 * 3 * 2, "attention_weights": 8 * 3}
        for kind, n in rows.items():
            if f".{kind}." in name:
                state_dict[name] = np.broadcast_to(np.zeros((), np.float32), (n,) + state_dict[name].shape[1:])
        if name.endswith("num_points_scale"):
            state_dict[name] = np.ones(3, np.float32)
    tensors, _ = rename_official(state_dict)
    cfg, variant, _ = infer_config(tensors)
    assert variant == "r18vd" and cfg.n_points == [1, 1, 1]
    assert set(expected_shapes(cfg).items()) == {(k, tuple(v.shape)) for k, v in tensors.items()}


# ---------------------------------------------------------------------------------------------------------------
# The official-layout tiny checkpoints reproduce transformers' recorded outputs
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["tiny_basic", "tiny_bottleneck"])
def test_official_pth_reproduces_the_recorded_outputs(case):
    ref = np.load(REFERENCE / case / "outputs.npz")
    model = load_model(OFFICIAL / case / f"{case}.pth")            # no torch; config.json beside the file
    out = model(ref["pixel_values"])
    assert_close(out.logits, ref["logits"], OUTPUT_ATOL, f"{case} .pth logits")
    assert_close(out.pred_boxes, ref["pred_boxes"], OUTPUT_ATOL, f"{case} .pth pred_boxes")
    # and the converted weights are bit for bit those transformers loaded from the hub-layout folder
    hub = load_model(REFERENCE / case)
    for name, array in hub.params["model"]["enc_score_head"].items():
        assert np.array_equal(model.params["model"]["enc_score_head"][name], array)
    assert np.array_equal(model(ref["pixel_values"]).logits, hub(ref["pixel_values"]).logits)


def test_official_to_hf_equals_the_hub_tensors():
    sd = load_pth(OFFICIAL / "tiny_bottleneck" / "tiny_bottleneck.pth")
    hub, _ = read_safetensors(REFERENCE / "tiny_bottleneck" / "model.safetensors")
    from rtdetrv2_np.weights import read_config
    cfg = read_config(OFFICIAL / "tiny_bottleneck" / "config.json")
    converted = official_to_hf(sd, cfg, "tiny_bottleneck.pth")
    assert sorted(converted) == sorted(hub)
    for name in hub:
        assert np.array_equal(converted[name], hub[name]), name


def test_missing_or_misshaped_tensor_in_an_official_checkpoint():
    sd = load_pth(OFFICIAL / "tiny_basic" / "tiny_basic.pth")
    cfg = load_model(REFERENCE / "tiny_basic").config
    short = {k: v for k, v in sd.items() if k != "decoder.dec_bbox_head.1.layers.2.bias"}
    with pytest.raises(RTDetrError, match=r"ckpt\.pth: missing tensor model\.decoder\.bbox_embed\.1\.layers\.2\.bias"):
        official_to_hf(short, cfg, "ckpt.pth")
    bad = dict(sd, **{"encoder.input_proj.1.conv.weight": np.zeros((16, 31, 1, 1), np.float32)})
    with pytest.raises(RTDetrError, match=r"tensor model\.encoder_input_proj\.1\.0\.weight has shape \[16, 31, 1, 1\]"):
        official_to_hf(bad, cfg, "ckpt.pth")


# ---------------------------------------------------------------------------------------------------------------
# Anchors
# ---------------------------------------------------------------------------------------------------------------

def test_anchor_report():
    # tiny_basic: the official formula at eval size 96x64 (torch) against ours (NumPy): equal up to 1 ulp of log
    _, aside = rename_official(load_pth(OFFICIAL / "tiny_basic" / "tiny_basic.pth"))
    report = compare_anchors(aside)
    assert report["size_hw"] == (96, 64) and report["mask_equal"]
    assert report["max_abs"] < 1e-6                           # 1 ulp of values up to ~3: rounding of log only
    # tiny_bottleneck: anchors put through 100,000 official EMA updates drift by float32 rounding (§9.3)
    _, aside = rename_official(load_pth(OFFICIAL / "tiny_bottleneck" / "tiny_bottleneck.pth"))
    report = compare_anchors(aside)
    assert report["size_hw"] == (64, 64) and report["mask_equal"]
    assert 1e-5 < report["max_abs"] < 1e-3 and 1e-5 < report["max_rel"] < 1e-3
    assert compare_anchors({}) is None


# ---------------------------------------------------------------------------------------------------------------
# The converted file and the command
# ---------------------------------------------------------------------------------------------------------------

def test_convert_command_writes_a_self_describing_file(tmp_path):
    out = tmp_path / "sub" / "tiny.safetensors"
    r = run_convert(OFFICIAL / "tiny_bottleneck" / "tiny_bottleneck.pth", "--out", out)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    lines = r.stdout.splitlines()
    assert lines[0].endswith("tiny_bottleneck.pth: 455 tensors")
    assert lines[1].startswith("architecture: from ") and "config.json" in lines[1]
    assert lines[2].startswith("anchors: the checkpoint's decoder.anchors (64x64) differ from recomputed ones by at "
                               "most 0.00014 (relative 0.00011); recomputed ones are used, as transformers does")
    assert lines[3].startswith(f"wrote {out} (0.5 MB, 423 tensors)")
    tensors, meta = read_safetensors(out)
    assert meta["format"] == "pt" and json.loads(meta[CONFIG_METADATA_KEY])["model_type"] == "rt_detr_v2"
    assert os.listdir(out.parent) == ["tiny.safetensors"]                   # no temporary file left
    ref = np.load(REFERENCE / "tiny_bottleneck" / "outputs.npz")
    out_model = load_model(out)
    assert_close(out_model(ref["pixel_values"]).logits, ref["logits"], OUTPUT_ATOL, "converted logits")


def test_convert_default_output_is_weights_folder(tmp_path):
    shutil.copytree(OFFICIAL / "tiny_basic", tmp_path / "ckpt")
    r = run_convert(tmp_path / "ckpt" / "tiny_basic.pth", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert os.listdir(tmp_path / "weights") == ["tiny_basic.safetensors"]
    assert "anchors: the checkpoint's decoder.anchors (96x64) differ from recomputed ones by at most" in r.stdout


def test_convert_hub_folder_with_discrete_method_reproduces_the_discrete_recording(tmp_path):
    # tiny_basic and tiny_basic_discrete hold the same weights (seed 1); only the config's method differs
    out = tmp_path / "d.safetensors"
    r = run_convert(REFERENCE / "tiny_basic", "--method", "discrete", "--out", out)
    assert r.returncode == 0, r.stderr
    model = load_model(out)
    assert model.config.decoder_method == "discrete"
    ref = np.load(REFERENCE / "tiny_basic_discrete" / "outputs.npz")
    assert_close(model(ref["pixel_values"]).logits, ref["logits"], OUTPUT_ATOL, "discrete logits")


def test_a_foreign_config_beside_the_pth_is_named_in_the_error(tmp_path):
    shutil.copy(OFFICIAL / "tiny_bottleneck" / "tiny_bottleneck.pth", tmp_path / "ckpt.pth")
    shutil.copy(OFFICIAL / "tiny_basic" / "config.json", tmp_path / "config.json")
    with pytest.raises(RTDetrError, match=r"ckpt\.pth: tensor .* has shape .*the architecture was read from .*"
                                          r"config\.json, found beside the file"):
        load_model(tmp_path / "ckpt.pth")


def test_dsp_file_name_gets_a_note_and_method_is_stored(tmp_path):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    shutil.copy(OFFICIAL / "tiny_basic" / "tiny_basic.pth", folder / "rtdetrv2_tiny_dsp_3x_coco.pth")
    shutil.copy(OFFICIAL / "tiny_basic" / "config.json", folder / "config.json")
    r = run_convert(folder / "rtdetrv2_tiny_dsp_3x_coco.pth", "--out", tmp_path / "a.safetensors")
    assert r.returncode == 0 and "note: the file name says dsp" in r.stdout
    assert load_model(tmp_path / "a.safetensors").method == "bilinear"
    r = run_convert(folder / "rtdetrv2_tiny_dsp_3x_coco.pth", "--method", "discrete", "--out", tmp_path / "b.safetensors")
    assert r.returncode == 0 and "note:" not in r.stdout
    assert load_model(tmp_path / "b.safetensors").method == "discrete"
    assert load_model(folder / "rtdetrv2_tiny_dsp_3x_coco.pth", method="discrete").method == "discrete"


@pytest.mark.parametrize("args, message", [
    (["missing.pth"], "error: missing.pth: no such file; check the path"),
    ([OFFICIAL / "tiny_basic" / "tiny_basic.pth", "--variant", "r18vd"],
     "tensor model.backbone.model.embedder.embedder.0.convolution.weight has shape [4, 3, 3, 3]"),
    ([REFERENCE / "tiny_basic", "--variant", "r18vd"], "--variant and --config apply to official .pth files only"),
])
def test_convert_errors_are_one_line_and_leave_nothing(tmp_path, args, message):
    r = run_convert(*args, "--out", tmp_path / "x.safetensors")
    assert r.returncode == 1
    assert len(r.stderr.splitlines()) == 1 and r.stderr.startswith("error: ") and message in r.stderr
    assert os.listdir(tmp_path) == []


def test_convert_usage_error_exit_2(tmp_path):
    r = run_convert("x.pth", "--variant", "r200")
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1 and r.stderr.startswith("error: argument --variant")


@pytest.mark.skipif(not (PTH_FIXTURES / "evil_system.pth").exists(), reason="tests/fixtures/pth not present")
@pytest.mark.parametrize("name", ["evil_system.pth", "evil_eval.pth"])
def test_malicious_pth_is_refused(tmp_path, name):
    marker = json.loads(str(np.load(PTH_FIXTURES / "expected.npz")["meta_json"]))["markers"][name]
    if os.path.exists(marker):
        os.unlink(marker)
    with pytest.raises(RTDetrError, match="refused to load"):
        load_model(PTH_FIXTURES / name)
    r = run_convert(PTH_FIXTURES / name, "--out", tmp_path / "x.safetensors")
    assert r.returncode == 1 and "refused to load" in r.stderr and len(r.stderr.splitlines()) == 1
    assert not os.path.exists(marker) and os.listdir(tmp_path) == []


@pytest.mark.skipif(not (PTH_FIXTURES / "plain.pth").exists(), reason="tests/fixtures/pth not present")
def test_a_pth_that_is_not_rt_detr_is_refused_by_name():
    with pytest.raises(RTDetrError, match=r"plain\.pth: no conversion rule for the tensor 'backbone\.conv1\.weight'"):
        convert(PTH_FIXTURES / "plain.pth")


def test_save_converted_is_atomic(tmp_path, monkeypatch):
    cfg = variant_config("r18vd")
    import safetensors.numpy

    def broken(tensors, path, metadata=None):
        open(path, "wb").write(b"partial")
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(safetensors.numpy, "save_file", broken)
    with pytest.raises(RTDetrError, match="No space left on device"):
        save_converted(tmp_path / "x.safetensors", cfg, {})
    assert os.listdir(tmp_path) == []
