"""RT-DETR v1 checkpoints (issue 12): the same NumPy model runs transformers' `RTDetrForObjectDetection`
(PekingU/rtdetr_* on the hub, config.json `model_type: "rt_detr"`) and the official v1 `.pth` releases
(lyuwenyu/RT-DETR rtdetr_pytorch).

v1 and v2 differ only in the decoder's cross-attention (rtdetrv2_np/model/deformable_attention.py: one point count for
every level, the literal 0.5 offset scale, no n_points_scale buffer, bilinear sampling only) and, in the official
checkpoints, in two module names (official.RULES). Fixtures, recorded by tools/record_reference.py with
transformers' v1 class and by tools/make_official_pth.py (their READMEs):
    tests/fixtures/reference/v1_tiny_basic   tiny v1 model, 3 points per level, every stage whole + its weights
    tests/fixtures/reference/v1_r18vd_640    r18vd, every stage (summaries), weights rebuilt from random_params
    tests/fixtures/reference/v1_r50vd_640    r50vd, end to end
    tests/fixtures/official/v1_tiny_basic    v1_tiny_basic's weights under the official v1 names, as a .pth
    tests/fixtures/official/official_keys.json.gz  "v1_<variant>": the official v1 model classes' state-dict names
The comparisons reuse tests/test_model.py's machinery and tolerances (STAGE_RTOL, MEAN_RTOL: see its docstring),
and tests/test_convert.py's OUTPUT_ATOL for the converted .pth.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_close
from test_convert import OUTPUT_ATOL, official_listing, shaped_like
from test_model import STAGE_RTOL, case_model, check_all_stages, load_case, pixel_values, query_permutation, reorder
from test_model import test_variant_end_to_end as variant_end_to_end

from rtdetrv2_np import build_model, load_model
from rtdetrv2_np.errors import RTDetrError
from rtdetrv2_np.model import config as C
from rtdetrv2_np.model.config import config_from_dict, variant_config
from rtdetrv2_np.official import infer_config, official_to_hf, rename_official
from rtdetrv2_np.postprocess import post_process_object_detection
from rtdetrv2_np.pth import load_pth
from rtdetrv2_np.random_weights import random_params
from rtdetrv2_np.weights import expected_shapes, flatten_params, parse_config, read_safetensors

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "tests" / "fixtures" / "reference"
OFFICIAL = ROOT / "tests" / "fixtures" / "official"
FIELDS = json.loads((REFERENCE / "transformers_config_fields.json").read_text())
CATS = "tests/data/coco_000000039769.png"
VARIANTS = ["r18vd", "r34vd", "r50vd_m", "r50vd", "r101vd"]


def one_line(excinfo, *needles):
    msg = str(excinfo.value)
    assert "\n" not in msg and len(msg) < 400, msg
    for n in needles:
        assert n in msg, f"{n!r} not in {msg!r}"
    return msg


# ---------------------------------------------------------------------------------------------------------------
# The recorded v1 cases equal transformers' RTDetrForObjectDetection, as the v2 cases do
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["v1_tiny_basic", "v1_r18vd_640"])
def test_every_stage_matches_transformers_v1(name):
    meta, ref = load_case(name)
    assert meta["model_class"] == "RTDetrForObjectDetection" and meta["hf_config"]["model_type"] == "rt_detr"
    model = case_model(name, meta)                 # v1_tiny_basic: load_model of the folder transformers loaded
    assert model.config.version == 1 and model.method == "bilinear"
    assert not [k for k in flatten_params(model.params) if k.endswith("n_points_scale")]   # v1 has no such buffer
    stages = model.trace(pixel_values(meta, ref))
    compared = check_all_stages(name, meta, ref, stages)
    last = meta["decoder_layers_run"] - 1
    expected = {"backbone.0", "backbone.2", "encoder.aifi", "encoder.output.2", "memory", "enc_logits", "target",
                "logits", "pred_boxes", f"decoder.{last}.sampling_locations", f"decoder.{last}.attention_weights"}
    assert expected <= set(compared), f"not compared: {expected - set(compared)}"


def test_v1_r18vd_final_outputs_within_1e4():
    """The issue's absolute bound for r18vd (tests/test_model.py), on the v1 recording."""
    meta, ref = load_case("v1_r18vd_640")
    stages = case_model("v1_r18vd_640", meta).trace(pixel_values(meta, ref))
    perm = query_permutation(stages["topk_index"], ref["topk_index"], stages["enc_logits"].max(-1))
    assert_close(reorder(stages["logits"], perm), ref["decoder.2.logits"], 1e-4, "v1 r18vd logits")
    assert_close(reorder(stages["pred_boxes"], perm), ref["decoder.2.boxes"], 1e-4, "v1 r18vd pred_boxes")


def test_v1_r50vd_end_to_end():
    meta, _ = load_case("v1_r50vd_640")
    assert meta["model_class"] == "RTDetrForObjectDetection" and config_from_dict(meta["config"]).version == 1
    variant_end_to_end("v1_r50vd_640")             # tests/test_model.py's end-to-end comparison


def test_v1_sampling_locations_divide_by_the_point_count():
    """v1 computes ((offsets / K_l) * wh) * 0.5 ([5] RTDetrMultiscaleDeformableAttention); with K_l = 3 that is not
    v2's ((offsets * float32(1/3)) * wh) * 0.5 bit for bit, and the v1 model uses the v1 formula."""
    from rtdetrv2_np.model import deformable_attention as msda
    rng = np.random.default_rng(0)
    boxes = rng.uniform(0.1, 0.9, (2, 5, 4)).astype(np.float32)
    offsets = rng.normal(0, 3, (2, 5, 2, 9, 2)).astype(np.float32)
    v1 = msda.sampling_locations_v1(boxes, offsets, [3, 3, 3])
    want = boxes[:, :, None, None, :2] + offsets / np.float32(3) * boxes[:, :, None, None, 2:] * np.float32(0.5)
    assert v1.dtype == np.float32 and np.array_equal(v1, want)
    v2 = msda.sampling_locations(boxes, offsets, [3, 3, 3])
    assert not np.array_equal(v1, v2) and np.allclose(v1, v2, rtol=0, atol=1e-6)      # rounding only
    with pytest.raises(ValueError, match="one point count for every level"):
        msda.sampling_locations_v1(boxes, offsets, [4, 3, 2])


# ---------------------------------------------------------------------------------------------------------------
# Config: model_type says the version; v2-only fields and discrete sampling refused for v1
# ---------------------------------------------------------------------------------------------------------------

def test_every_rtdetrconfig_field_is_classified():
    """transformers' v1 RTDetrConfig has RTDetrV2Config's fields less V2_ONLY_FIELDS plus V1_INERT_FIELDS."""
    v1 = set(FIELDS["RTDetrConfig"]["fields"]) | set(FIELDS["RTDetrConfig"]["to_dict_keys"])
    v2 = set(FIELDS["RTDetrV2Config"]["fields"]) | set(FIELDS["RTDetrV2Config"]["to_dict_keys"])
    assert v2 - v1 == set(C.V2_ONLY_FIELDS)
    assert v1 - v2 == set(C.V1_INERT_FIELDS)
    for name, value in FIELDS["RTDetrConfig"]["defaults"].items():
        if name in FIELDS["RTDetrV2Config"]["defaults"] and name != "backbone_config":
            assert FIELDS["RTDetrV2Config"]["defaults"][name] == value, name     # same defaults where shared


def test_v1_config_round_trip_and_what_transformers_was_given():
    cfg = variant_config("r18vd", model_type="rt_detr")
    d = cfg.to_hf_dict()
    assert cfg.version == 1 and d["model_type"] == "rt_detr" and d["architectures"] == ["RTDetrForObjectDetection"]
    assert not set(C.V2_ONLY_FIELDS) & set(d) and "version" not in d
    assert config_from_dict(d) == cfg and config_from_dict(variant_config("r18vd").to_hf_dict()).version == 2
    assert config_from_dict({}).version == 2                       # no model_type: v2, as before v1 was read
    # every key we write for v1 is a field of RTDetrConfig, or ours / the backbone's / the label maps
    v1_keys = set(FIELDS["RTDetrConfig"]["fields"]) | set(FIELDS["RTDetrConfig"]["to_dict_keys"])
    assert set(d) - v1_keys <= {"decoder_eval_idx", "label2id", "id2label", "architectures", "model_type"}
    meta, _ = load_case("v1_r18vd_640")                             # what RTDetrConfig was built from
    labels = ("id2label", "label2id", "decoder_eval_idx")
    assert {k: v for k, v in meta["hf_config"].items() if k not in labels} == \
        {k: v for k, v in d.items() if k not in labels}


@pytest.mark.parametrize("field, value, needle", [
    ("decoder_method", "discrete", "decoder_method = 'discrete' is an RT-DETRv2 field; this config is RT-DETR v1"),
    ("decoder_offset_scale", 1.0, "decoder_offset_scale = 1.0 is an RT-DETRv2 field"),
    ("decoder_n_points", [4, 4, 4], "RT-DETR v1 (model_type 'rt_detr') has one point count for every level"),
    ("disable_custom_kernels", "yes", "disable_custom_kernels must be true or false"),
    ("model_type", "detr", "model_type 'detr' is not an RT-DETRv2 config"),
])
def test_v1_config_refuses_what_v1_cannot_compute(field, value, needle):
    d = dict(variant_config("r18vd", model_type="rt_detr").to_hf_dict(), **{field: value})
    with pytest.raises(RTDetrError) as e:
        parse_config(d, "v1/config.json")
    one_line(e, "v1/config.json", needle)


@pytest.mark.parametrize("fields", [dict(decoder_method="default"), dict(decoder_offset_scale=0.5),
                                    dict(disable_custom_kernels=False), dict(decoder_n_points=4),
                                    dict(tie_word_embeddings=True, decoder_n_levels=3)])
def test_v1_config_accepts_the_values_v1_computes_with(fields):
    d = dict(variant_config("r18vd", model_type="rt_detr").to_hf_dict(), **fields)
    assert parse_config(d, "v1/config.json") == variant_config("r18vd", model_type="rt_detr")


def test_timm_backbone_revisions_are_named():
    """Early PekingU/rtdetr_* revisions named a timm backbone (transformers 4.x fields): refused, saying so."""
    d = dict(variant_config("r50vd", model_type="rt_detr").to_hf_dict(), use_timm_backbone=True,
             backbone="resnet50d")
    with pytest.raises(RTDetrError) as e:
        parse_config(d, "rtdetr_r50vd/config.json")
    one_line(e, "use_timm_backbone = True is not supported", "early revisions of the PekingU/rtdetr_* hub",
             "rt_detr_resnet")
    d = dict(variant_config("r50vd", model_type="rt_detr").to_hf_dict(),
             backbone_config={"model_type": "timm_backbone"})
    with pytest.raises(RTDetrError) as e:
        parse_config(d, "rtdetr_r50vd/config.json")
    one_line(e, "backbone_config.model_type = 'timm_backbone'", "early revisions of the PekingU/rtdetr_*")


def test_discrete_override_is_refused_with_one_line(tmp_path):
    folder = REFERENCE / "v1_tiny_basic"
    with pytest.raises(RTDetrError) as e:
        load_model(folder, method="discrete")
    one_line(e, "v1_tiny_basic", "method 'discrete' is not available for an RT-DETR v1 checkpoint")
    cfg = load_model(folder).config
    with pytest.raises(ValueError, match="RT-DETR v1"):
        cfg.with_method("discrete")
    assert cfg.with_method("bilinear") == cfg
    with pytest.raises(RTDetrError) as e:
        load_model(OFFICIAL / "v1_tiny_basic" / "v1_tiny_basic.pth", method="discrete")
    one_line(e, "v1_tiny_basic.pth", "RT-DETR v1")


def test_config_and_weights_of_different_versions_are_named(tmp_path):
    """v1 weights with a v2 config (and the reverse): the message says which version the tensors are."""
    v1 = tmp_path / "v1_weights_v2_config"
    shutil.copytree(REFERENCE / "v1_tiny_basic", v1)
    d = json.loads((v1 / "config.json").read_text())
    (v1 / "config.json").write_text(json.dumps(dict(d, model_type="rt_detr_v2")))
    with pytest.raises(RTDetrError) as e:
        load_model(v1)
    one_line(e, "model.safetensors: the checkpoint has no n_points_scale buffers: it is RT-DETR v1")
    v2 = tmp_path / "v2_weights_v1_config"
    shutil.copytree(REFERENCE / "tiny_basic", v2)
    d = json.loads((v2 / "config.json").read_text())
    (v2 / "config.json").write_text(json.dumps(dict(d, model_type="rt_detr")))
    with pytest.raises(RTDetrError) as e:
        load_model(v2)
    one_line(e, "the checkpoint has n_points_scale buffers: it is RT-DETRv2")


# ---------------------------------------------------------------------------------------------------------------
# The command line on a v1 hub-layout folder
# ---------------------------------------------------------------------------------------------------------------

def detect(*args):
    return subprocess.run([sys.executable, "-m", "rtdetrv2_np.detect", *map(str, args)], capture_output=True,
                          text=True, cwd=ROOT, timeout=300, env=dict(os.environ, PYTHONPATH=str(ROOT)))


def test_detect_command_on_a_v1_folder():
    """python -m rtdetrv2_np.detect IMAGE --model <v1 folder> gives the detections of transformers' v1 outputs.

    The recording's logits and boxes (RTDetrForObjectDetection on the same pixels) through post-processing are the
    expected detections: same (label, score, box) up to float32 rounding (scores 1e-5: logits differ by ~1e-6;
    boxes 1e-3 pixel: normalised boxes agree to ~1e-6, times 640)."""
    meta, ref = load_case("v1_tiny_basic")
    H, W = meta["size_hw"]
    r = detect(CATS, "--model", REFERENCE / "v1_tiny_basic", "--size", H, W, "--threshold", 0, "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["method"] == "bilinear"
    (image,) = doc["images"]
    (want,) = post_process_object_detection(ref["logits"], ref["pred_boxes"], [(480, 640)], threshold=0)
    got = image["detections"]
    assert len(got) == len(want["scores"]) == meta["config"]["num_queries"]
    unmatched = list(range(len(got)))
    for score, label, box in zip(want["scores"], want["labels"], want["boxes"]):
        hits = [i for i in unmatched if got[i]["label_id"] == label and abs(got[i]["score"] - score) <= 1e-5
                and np.abs(np.array(got[i]["box"]) - box).max() <= 1e-3]
        assert hits, f"no detection of label {label} at score {score:.6f}, box {box}"
        unmatched.remove(hits[0])
    assert not unmatched


def test_detect_command_refuses_discrete_for_v1_with_one_line():
    r = detect(CATS, "--model", REFERENCE / "v1_tiny_basic", "--size", 96, 64, "--method", "discrete")
    assert r.returncode == 1 and r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "RT-DETR v1" in lines[0], r.stderr


def test_fast_path_runs_v1():
    """load_model(fast=True) on a v1 folder: the fast path takes its 1/K_l from the config when a checkpoint has no
    buffer, which for K_l = 3 differs from v1's division only in rounding."""
    meta, ref = load_case("v1_tiny_basic")
    out = load_model(REFERENCE / "v1_tiny_basic", fast=True)(ref["pixel_values"])
    assert_close(out.logits, ref["logits"], 0, "v1 fast logits", rtol=STAGE_RTOL)
    assert_close(out.pred_boxes, ref["pred_boxes"], 0, "v1 fast pred_boxes", rtol=STAGE_RTOL)


# ---------------------------------------------------------------------------------------------------------------
# Official v1 .pth: rules, inferred architecture, the tiny fixture
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", VARIANTS)
def test_rules_map_every_official_v1_tensor(variant):
    """The official v1 model classes' state dicts (official_keys.json.gz "v1_<variant>", written by
    tools/make_official_pth.py --official-v1-src from rtdetr_pytorch) convert, and the architecture is inferred."""
    listing = official_listing()[f"v1_{variant}"]
    names = [n for n, *_ in listing]
    assert "decoder.enc_output.0.weight" in names and "encoder.input_proj.0.0.weight" in names
    assert not [n for n in names if n.endswith("num_points_scale") or n.startswith("decoder.anchors")]
    tensors, aside = rename_official(shaped_like(listing), variant)
    assert aside == {}                                              # v1 keeps its anchors out of the state dict
    cfg, found, how = infer_config(tensors, source=variant)
    assert found == variant and cfg.version == 1 and "RT-DETR v1" in how
    assert cfg.n_points == [4, 4, 4] and cfg.decoder_attention_heads == 8 and cfg.method == "bilinear"
    assert cfg.decoder_eval_idx == (2 if variant == "r50vd_m" else -1)      # v1 r50vd_m: eval_idx 2 as well
    want = expected_shapes(cfg)
    assert {k: tuple(v.shape) for k, v in tensors.items()} == {k: tuple(v) for k, v in want.items()}
    assert cfg == variant_config(variant, model_type="rt_detr", id2label=cfg.id2label)


def test_official_v1_pth_reproduces_the_recorded_outputs():
    ref = np.load(REFERENCE / "v1_tiny_basic" / "outputs.npz")
    path = OFFICIAL / "v1_tiny_basic" / "v1_tiny_basic.pth"
    model = load_model(path)                                        # no torch; config.json beside the file
    assert model.config.version == 1
    out = model(ref["pixel_values"])
    assert_close(out.logits, ref["logits"], OUTPUT_ATOL, "v1 .pth logits")
    assert_close(out.pred_boxes, ref["pred_boxes"], OUTPUT_ATOL, "v1 .pth pred_boxes")
    # the converted tensors are bit for bit those transformers loaded
    hub, _ = read_safetensors(REFERENCE / "v1_tiny_basic" / "model.safetensors")
    converted = official_to_hf(load_pth(path), model.config, path.name)
    assert sorted(converted) == sorted(hub)
    for name in hub:
        assert np.array_equal(converted[name], hub[name]), name
    # without the config.json beside it: read as v1 (no num_points_scale), whose 2 heads x 3 points the shapes
    # cannot tell from 8 x 0.75 (test_v1_points_need_eight_heads): the message asks for the config
    with pytest.raises(RTDetrError) as e:
        infer_config(rename_official(load_pth(path))[0], source=path.name)
    one_line(e, "v1_tiny_basic.pth: sampling_offsets has 36 rows", "RT-DETR v1", "config.json")


def test_convert_command_on_a_v1_pth(tmp_path):
    out = tmp_path / "v1.safetensors"
    r = subprocess.run([sys.executable, "-m", "rtdetrv2_np.convert", OFFICIAL / "v1_tiny_basic" / "v1_tiny_basic.pth",
                        "--out", out], capture_output=True, text=True, cwd=ROOT, timeout=300,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert r.returncode == 0, r.stderr
    _, meta = read_safetensors(out)
    assert json.loads(meta["config"])["model_type"] == "rt_detr"
    ref = np.load(REFERENCE / "v1_tiny_basic" / "outputs.npz")
    assert_close(load_model(out)(ref["pixel_values"]).logits, ref["logits"], OUTPUT_ATOL, "converted v1 logits")


# ---------------------------------------------------------------------------------------------------------------
# infer_config: what it reads off the tensors, and bad values as RTDetrError
# ---------------------------------------------------------------------------------------------------------------

def test_infer_config_reads_learned_queries_and_denoising():
    sd = shaped_like(official_listing()["r18vd"])
    sd["decoder.tgt_embed.weight"] = np.zeros((100, 256), np.float32)     # learn_query_content, 100 queries
    del sd["decoder.denoising_class_embed.weight"]                           # trained without denoising
    tensors, _ = rename_official(sd)
    cfg, variant, _ = infer_config(tensors)
    assert variant == "r18vd" and cfg.learn_initial_query and cfg.num_queries == 100 and cfg.num_denoising == 0
    assert set(expected_shapes(cfg)) == set(tensors)
    model = build_model(cfg, random_params(expected_shapes(cfg), 0, cfg.n_points))
    assert model.params["model"]["weight_embedding"]["weight"].shape == (100, 256)


@pytest.mark.parametrize("change, needle", [
    # 16 rows of sampling offsets: 0 heads of 12 points (v2)
    ({"decoder.decoder.layers.0.cross_attn.sampling_offsets.weight": np.zeros((16, 256), np.float32)},
     "decoder_attention_heads = 0 is outside the allowed range"),
    # a 1/K_l buffer holding inf (1 / inf = 0 points: must not loop forever)
    ({"decoder.decoder.layers.0.cross_attn.num_points_scale": np.full(12, np.inf, np.float32)},
     "num_points_scale buffer"),
    ({"decoder.decoder.layers.0.cross_attn.num_points_scale": np.full(3, 1e-9, np.float32)},
     "num_points_scale buffer"),
    # no classes
    ({"decoder.dec_score_head.0.weight": np.zeros((0, 256), np.float32)}, "num_labels must be an integer in 1.."),
    ({"decoder.dec_score_head.0.weight": np.broadcast_to(np.float32(0), (10 ** 7, 256))},
     "num_labels must be an integer in 1..100000, got 10000000"),
    # a tensor with too few dimensions
    ({"encoder.input_proj.0.conv.weight": np.zeros((256,), np.float32)},
     "tensor model.encoder_input_proj.0.0.weight has shape [256], not the 2 or more dimensions"),
    ({"decoder.decoder.layers.0.cross_attn.num_points_scale": np.full(12, np.nan, np.float32)},
     "num_points_scale buffer"),
])
def test_bad_values_read_from_shapes_are_rtdetr_errors(change, needle):
    sd = dict(shaped_like(official_listing()["r18vd"]), **change)
    tensors, _ = rename_official(sd)
    with pytest.raises(RTDetrError) as e:
        infer_config(tensors, source="bad.pth")
    one_line(e, "bad.pth", needle)


def test_v1_points_need_eight_heads():
    """A v1 state dict whose sampling_offsets rows are not 8 heads x 3 levels x K x 2 cannot be read without a
    config: the message says so (a config.json beside the file decides instead)."""
    sd = shaped_like(official_listing()["v1_r18vd"])
    sd["decoder.decoder.layers.0.cross_attn.sampling_offsets.weight"] = np.zeros((100, 256), np.float32)
    with pytest.raises(RTDetrError) as e:
        infer_config(rename_official(sd)[0], source="v1.pth")
    one_line(e, "v1.pth", "sampling_offsets has 100 rows", "config.json")
