"""config.json: every field of transformers' RTDetrV2Config (and its backbone's RTDetrResNetConfig) is used, inert or
refused (rtdetrv2_np/model/config.py), and every check happens at load, before anything is allocated.

Fixtures (tests/fixtures/reference/, recorded by tools/record_reference.py with transformers 5.24, torch 2.13 CPU):
  transformers_config_fields.json   the field names and defaults of both config classes, ACT2CLS's activation
                                    names, and a config.json as transformers' save_pretrained writes it;
  tiny_<field>/                     end-to-end outputs of transformers for the tiny_basic architecture with one
                                    field (or a few) at a value other than its default; the weights are rebuilt from
                                    rtdetrv2_np.random_weights with the recorded seed.

Tolerance STAGE_ATOL 1e-4, as in tests/test_model.py: the tiny models' values are O(1) and float32 GEMMs in another
summation order differ by ~1e-6 over the network (measured here at most 2.1e-6); every recorded field, set back to
its default, moves the outputs by at least 2.4e-3 (24x the tolerance; printed by test_each_recorded_field_matters).
"""

import json
import os
import resource
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_close
from PIL import Image

from rtdetrv2_np import build_model, load_model
from rtdetrv2_np.errors import RTDetrError
from rtdetrv2_np.model import config as C
from rtdetrv2_np.model.config import config_from_dict, variant_config
from rtdetrv2_np.random_weights import random_params
from rtdetrv2_np.weights import MAX_MODEL_BYTES, estimate_memory, expected_shapes, parse_config, read_safetensors

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "reference"
FIELDS = json.loads((FIXTURES / "transformers_config_fields.json").read_text())
STAGE_ATOL = 1e-4

# Fields this package classifies that transformers 5.24's dataclasses do not have: ours, PreTrainedConfig's
# num_labels keyword, what save_pretrained / to_dict add, and transformers 4.x fields found in hub config.json files.
NOT_IN_TRANSFORMERS_5 = {"decoder_eval_idx", "num_labels", "model_type", "_name_or_path", "output_attentions",
                         "torch_dtype", "use_pretrained_backbone", "use_timm_backbone", "backbone",
                         "backbone_kwargs", "stage_names", "out_features", "out_indices"}


def kinds(used, inert, refused):
    """{field: kind}; a field listed under two kinds is an error."""
    out = {}
    for kind, names in (("used", used), ("inert", inert), ("refused", refused)):
        for name in names:
            assert name not in out, f"{name} is both {out[name]} and {kind}"
            out[name] = kind
    return out


TOP = kinds(C.USED_FIELDS, C.INERT_FIELDS, C.REFUSED_FIELDS)
BACKBONE = kinds(C.BACKBONE_USED_FIELDS, C.BACKBONE_INERT_FIELDS, C.BACKBONE_REFUSED_FIELDS)


def tiny_dict():
    """The tiny_basic config.json (what transformers loaded for the tiny_basic fixtures)."""
    return json.loads((FIXTURES / "tiny_basic" / "config.json").read_text())


def one_line_error(d, *needles):
    """parse_config(d) must raise one RTDetrError line that names every needle; returns the message."""
    with pytest.raises(RTDetrError) as e:
        parse_config(d, "model/config.json")
    msg = str(e.value)
    assert "\n" not in msg and len(msg) < 400, msg
    for n in needles:
        assert n in msg, f"{n!r} not in {msg!r}"
    return msg


# ----------------------------------------------------------------------------------------------------------------
# Every field has a kind
# ----------------------------------------------------------------------------------------------------------------

def test_every_transformers_field_is_classified():
    """The table of every field with its kind; fails if transformers' config gains a field we do not classify."""
    assert FIELDS["transformers"] == "5.24.0"
    top = set(FIELDS["RTDetrV2Config"]["fields"]) | set(FIELDS["RTDetrV2Config"]["to_dict_keys"])
    bb = {f.lstrip("_") for f in FIELDS["RTDetrResNetConfig"]["fields"]} | \
        set(FIELDS["RTDetrResNetConfig"]["to_dict_keys"])        # _out_features is written as out_features
    assert not top - set(TOP), f"RTDetrV2Config fields with no kind: {sorted(top - set(TOP))}"
    assert not bb - set(BACKBONE), f"RTDetrResNetConfig fields with no kind: {sorted(bb - set(BACKBONE))}"
    extra = (set(TOP) - top) | (set(BACKBONE) - bb)
    assert extra <= NOT_IN_TRANSFORMERS_5, f"classified but unknown to transformers: {extra - NOT_IN_TRANSFORMERS_5}"
    print(f"\n{'field':40s} kind     (transformers {FIELDS['transformers']})")
    for name, kind in sorted(TOP.items()):
        print(f"{name:40s} {kind}")
    for name, kind in sorted(BACKBONE.items()):
        print(f"{'backbone_config.' + name:40s} {kind}")


def test_defaults_and_accepted_values_are_transformers_defaults():
    """A config.json that omits a field means transformers' default: ours must be the same (used fields), and the one
    value a refused field accepts must be that default."""
    top, bb = FIELDS["RTDetrV2Config"]["defaults"], FIELDS["RTDetrResNetConfig"]["defaults"]
    default = C.Config()
    for name in C.USED_FIELDS:
        if name in top and hasattr(default, name) and name != "id2label":   # id2label: 80 COCO-sized, see config.py
            ours = getattr(default, name)
            assert (list(ours) if isinstance(ours, tuple) else ours) == top[name], name
    for name in ("layer_type", "depths", "hidden_sizes", "embedding_size"):
        assert list(np.atleast_1d(getattr(default, name))) == list(np.atleast_1d(bb[name])), name
    assert list(default.out_indices) == bb["_out_indices"]         # RTDetrV2Config's backbone default: stages 2-4
    for name, (allowed, _) in C.REFUSED_FIELDS.items():
        assert name not in top or top[name] == allowed, name
    for name, (allowed, _) in C.BACKBONE_REFUSED_FIELDS.items():
        assert bb[name] == allowed, name


def test_activation_names_are_transformers_names():
    """Each accepted activation name builds, in transformers, the function we compute (ACT2CLS's classes)."""
    act2cls = FIELDS["ACT2CLS"]
    assert act2cls["relu"] == "ReLU" and act2cls["gelu"] == "GELUActivation"    # exact erf GELU (nn.gelu)
    assert act2cls["silu"] == "SiLUActivation" and act2cls["swish"] == "SiLU"   # both F.silu
    for field, names in C.ACTIVATIONS.items():
        assert set(names) <= set(act2cls), field
        for name in names:
            cfg = config_from_dict({field: name})
            assert getattr(cfg, field) == ("silu" if name == "swish" else name)
        for name in set(act2cls) - set(names):                     # gelu_new, relu6, mish, ...: refused
            with pytest.raises(C.ConfigError, match=field):
                config_from_dict({field: name})


# ----------------------------------------------------------------------------------------------------------------
# Configs that must load
# ----------------------------------------------------------------------------------------------------------------

def test_a_config_json_written_by_transformers_loads_as_written():
    """save_pretrained's config.json (every field, transformers' own types) gives the tiny_basic Config."""
    written = FIELDS["save_pretrained_config_json"]["config.json"]
    cfg = parse_config(written, "save_pretrained config.json")
    ref = config_from_dict(tiny_dict())
    assert cfg == ref and cfg.id2label == ref.id2label


def test_published_demo_and_fine_tune_configs_load():
    for name in C.VARIANTS:
        parse_config(variant_config(name).to_hf_dict(), name)
    demo = dict(backbone_config=dict(layer_type="basic", depths=[2, 2, 2, 2], hidden_sizes=[32, 64, 96, 128],
                                     embedding_size=32),
                encoder_in_channels=[64, 96, 128], encoder_hidden_dim=80, encoder_ffn_dim=320,
                encoder_attention_heads=4, hidden_expansion=0.5, d_model=80, decoder_in_channels=[80, 80, 80],
                decoder_ffn_dim=320, decoder_layers=3, decoder_attention_heads=4, num_queries=100,
                id2label={str(i): f"shape_{i}" for i in range(4)}, freeze_backbone_batch_norms=False)
    assert parse_config(demo, "demo").num_labels == 4              # the demo architecture (tools/train_demo.py)
    for path in sorted((ROOT / "rtdetrv2_np" / "demo").glob("models/*/config.json")):
        parse_config(json.loads(path.read_text()), path)           # the shipped demo models, if any
    objects365 = dict(variant_config("r50vd").to_hf_dict(), num_queries=900,
                      id2label={str(i): f"c{i}" for i in range(365)})
    assert parse_config(objects365, "o365").num_labels == 365
    assert parse_config({"num_labels": 13204}, "v3det").num_labels == 13204
    legacy = dict(tiny_dict(), use_timm_backbone=False, backbone=None, backbone_kwargs=None,
                  use_pretrained_backbone=False, torch_dtype="float32", eval_size=[640, 640])
    assert parse_config(legacy, "4.x").eval_size == (640, 640)    # transformers 4.x wrote these


# ----------------------------------------------------------------------------------------------------------------
# Inert fields: accepted, and nothing changes
# ----------------------------------------------------------------------------------------------------------------

INERT_ALTERNATIVES = {            # a value other than transformers' default for every inert field
    "initializer_range": 0.5, "initializer_bias_prior_prob": 0.3, "freeze_backbone_batch_norms": False,
    "dropout": 0.3, "activation_dropout": 0.3, "attention_dropout": 0.3, "num_denoising": 0,
    "label_noise_ratio": 0.1, "box_noise_scale": 0.1, "with_box_refine": False, "is_encoder_decoder": False,
    "matcher_alpha": 0.1, "matcher_gamma": 1.0, "matcher_class_cost": 1.0, "matcher_bbox_cost": 1.0,
    "matcher_giou_cost": 1.0, "use_focal_loss": False, "auxiliary_loss": False, "focal_loss_alpha": 0.1,
    "focal_loss_gamma": 1.0, "weight_loss_vfl": 2.0, "weight_loss_bbox": 1.0, "weight_loss_giou": 1.0,
    "eos_coefficient": 0.5, "tie_word_embeddings": False, "transformers_version": "4.49.0",
    "architectures": ["X"], "model_type": "rt_detr_v2", "_name_or_path": "somewhere", "dtype": "bfloat16",
    "torch_dtype": "float16", "output_hidden_states": True, "output_attentions": True, "return_dict": False,
    "chunk_size_feed_forward": 7, "problem_type": "single_label_classification", "label2id": {"a": 0},
    "use_pretrained_backbone": True,
}


def test_inert_fields_give_bit_identical_outputs():
    """Every inert field at another value: the same Config, and the same weights + pixels give the same bits."""
    assert set(INERT_ALTERNATIVES) == set(C.INERT_FIELDS)
    base = tiny_dict()
    ref_cfg = config_from_dict(base)
    for name, value in INERT_ALTERNATIVES.items():
        cfg = parse_config(dict(base, **{name: value}), name)
        same = cfg == ref_cfg if name != "num_denoising" else replace(cfg, num_denoising=100) == ref_cfg
        assert same and cfg.id2label == ref_cfg.id2label, name
    bb_alt = dict(base["backbone_config"], stage_names=["x"], dtype="float16", id2label={"0": "a"})
    assert parse_config(dict(base, backbone_config=bb_alt), "backbone") == ref_cfg
    everything = parse_config(dict(base, **INERT_ALTERNATIVES), "all inert fields changed")
    tensors, _ = read_safetensors(FIXTURES / "tiny_basic" / "model.safetensors")
    x = np.asarray(np.load(FIXTURES / "tiny_basic" / "outputs.npz")["pixel_values"])
    out_ref = build_model(ref_cfg, tensors)(x)
    tensors.pop("model.denoising_class_embed.weight")              # num_denoising = 0: the file need not hold it
    out = build_model(everything, tensors)(x)
    assert np.array_equal(out.logits, out_ref.logits) and np.array_equal(out.pred_boxes, out_ref.pred_boxes)


# ----------------------------------------------------------------------------------------------------------------
# Used fields at other values, against transformers
# ----------------------------------------------------------------------------------------------------------------

# case: (what it exercises, the same fields set back to their defaults; None where that needs other weights)
RECORDED = {
    "tiny_learn_initial_query": ("learned initial queries", dict(learn_initial_query=False)),
    "tiny_anchor_image_size": ("anchors fixed at 64x96 for a 96x64 input", dict(anchor_image_size=None)),
    "tiny_batch_norm_eps": ("batch_norm_eps 0.1 in CCFM and decoder_input_proj only; freeze_backbone_batch_norms "
                            "false", dict(batch_norm_eps=1e-5)),
    "tiny_layer_norm_eps": ("layer_norm_eps 0.1 in every LayerNorm", dict(layer_norm_eps=1e-5)),
    "tiny_eval_size": ("eval_size set: no AIFI position embedding", dict(eval_size=None)),
    "tiny_activations": ("CCFM relu, AIFI swish, decoder gelu",
                         dict(activation_function="silu", encoder_activation_function="gelu",
                              decoder_activation_function="relu")),
    "tiny_activations_b": ("CCFM swish, AIFI relu, decoder silu",
                           dict(activation_function="silu", encoder_activation_function="gelu",
                                decoder_activation_function="relu")),
    "tiny_activations_c": ("CCFM gelu, AIFI silu, decoder swish",
                           dict(activation_function="silu", encoder_activation_function="gelu",
                                decoder_activation_function="relu")),
    "tiny_encoder_fields": ("2 AIFI layers on levels 1 and 2, temperature 20",
                            dict(positional_encoding_temperature=10000)),
    "tiny_no_aifi": ("encoder_layers 0: no AIFI", None),
    "tiny_decoder_fields": ("decoder_offset_scale 1.0, 3 points per level", dict(decoder_offset_scale=0.5)),
    "tiny_inert_fields": ("every inert field at another value (transformers ignores them too)", None),
}


def recorded_case(name):
    """(meta, reference arrays, Config parsed from the config.json transformers was given, weights, pixels)."""
    d = FIXTURES / name
    meta = json.loads((d / "meta.json").read_text())
    ref = dict(np.load(d / "outputs.npz"))
    cfg = parse_config(meta["hf_config"], name)
    assert cfg == config_from_dict(meta["config"])
    H, W = meta["size_hw"]
    x = np.stack([(np.asarray(Image.open(ROOT / p).convert("RGB").resize((W, H), Image.BILINEAR), np.float32)
                   / np.float32(255)).transpose(2, 0, 1) for p in meta["images"]])   # as recorded (its README)
    return meta, ref, cfg, random_params(expected_shapes(cfg), meta["seed"], cfg.n_points), x


def end_to_end(stages, ref, n_layers):
    """[(recorded array name, ours, reference)] for the end-to-end arrays, our queries put in the reference's order
    (the selected sets must be equal; the recording's selection gaps are >= 1e-3, so the order is the same)."""
    ours, theirs = stages["topk_index"], ref["topk_index"]
    for b in range(len(theirs)):
        assert sorted(ours[b]) == sorted(theirs[b]), f"image {b}: another set of queries was selected"
    perm = [[list(ours[b]).index(i) for i in theirs[b]] for b in range(len(theirs))]
    pairs = [("reference_boxes", "reference_boxes")] + \
        [(f"decoder.{i}.boxes", f"decoder.{i}.boxes") for i in range(n_layers)] + \
        [("logits", f"decoder.{n_layers - 1}.logits")]
    return [(key, np.stack([stages[mine][b, p] for b, p in enumerate(perm)]), ref[key]) for mine, key in pairs]


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_recorded_field_matches_transformers(name):
    meta, ref, cfg, params, x = recorded_case(name)
    stages = build_model(cfg, params).trace(x)
    for key, ours, theirs in end_to_end(stages, ref, cfg.decoder_layers):
        assert_close(ours, theirs, STAGE_ATOL, f"{name} ({RECORDED[name][0]}): {key}")


@pytest.mark.parametrize("name", sorted(k for k, (_, reset) in RECORDED.items() if reset))
def test_each_recorded_field_matters(name):
    """The same weights with the case's fields at their defaults miss the recording by far more than the tolerance:
    the recording tests those fields, and ignoring them would fail it."""
    meta, ref, cfg, params, x = recorded_case(name)
    default = replace(cfg, **RECORDED[name][1])
    params = {k: v for k, v in params.items() if k in expected_shapes(default)}
    stages = build_model(default, params).trace(x)
    if not np.array_equal(np.sort(stages["topk_index"], 1), np.sort(ref["topk_index"], 1)):
        print(f"{name}: at the defaults another set of queries is selected")
        return
    diffs = {key: float(np.abs(ours - theirs).max()) for key, ours, theirs in end_to_end(stages, ref,
                                                                                       cfg.decoder_layers)}
    print(f"{name}: at the defaults, max differences {diffs}")
    assert max(diffs.values()) > 10 * STAGE_ATOL, diffs


def test_no_aifi_means_no_encoder_layer_weights_and_no_aifi_stage():
    _, _, cfg, params, x = recorded_case("tiny_no_aifi")
    assert not any(k.startswith("model.encoder.encoder.") for k in params)
    assert "encoder.aifi" not in build_model(cfg, params).trace(x)


def test_anchor_image_size_refuses_an_input_with_other_positions():
    _, _, cfg, params, x = recorded_case("tiny_anchor_image_size")
    model = build_model(cfg, params)
    with pytest.raises(ValueError, match=r"anchor_image_size \[64, 96\].*126 positions.*input has 504"):
        model(np.zeros((1, 3, 192, 128), np.float32))
    transposed = model(np.ascontiguousarray(x.transpose(0, 1, 3, 2)))   # 64x96: its own grid, same anchors
    assert np.isfinite(transposed.logits).all()


def test_more_queries_than_positions_is_a_clear_error():
    meta, ref, cfg, params, x = recorded_case("tiny_decoder_fields")
    model = build_model(replace(cfg, num_queries=22), params)          # 32x32: 16 + 4 + 1 = 21 positions
    with pytest.raises(ValueError, match="selects 22 queries .* from 21 encoder positions"):
        model(np.zeros((1, 3, 32, 32), np.float32))


# ----------------------------------------------------------------------------------------------------------------
# Refused fields and hostile values: one line, before anything is allocated
# ----------------------------------------------------------------------------------------------------------------

REFUSED_ALTERNATIVES = {"normalize_before": True, "use_timm_backbone": True, "backbone": "resnet50",
                        "backbone_kwargs": {"out_indices": [2, 3, 4]}}
BACKBONE_REFUSED_ALTERNATIVES = {"num_channels": 1, "hidden_act": "gelu", "downsample_in_first_stage": True,
                                 "downsample_in_bottleneck": True}


def test_refused_fields_name_the_field_and_the_accepted_value():
    base = tiny_dict()
    assert set(REFUSED_ALTERNATIVES) == set(C.REFUSED_FIELDS)
    assert set(BACKBONE_REFUSED_ALTERNATIVES) == set(C.BACKBONE_REFUSED_FIELDS)
    for name, value in REFUSED_ALTERNATIVES.items():
        allowed = C.REFUSED_FIELDS[name][0]
        one_line_error(dict(base, **{name: value}), name, f"only {allowed!r}")
        parse_config(dict(base, **{name: allowed}), name)
    for name, value in BACKBONE_REFUSED_ALTERNATIVES.items():
        allowed = C.BACKBONE_REFUSED_FIELDS[name][0]
        one_line_error(dict(base, backbone_config=dict(base["backbone_config"], **{name: value})),
                       f"backbone_config.{name}", f"only {allowed!r}")


HOSTILE = [   # (fields, what the message must name); the examples first
    (dict(decoder_layers=1000000), "decoder_layers = 1000000 is outside the allowed range 1..32"),
    (dict(backbone_config=dict(depths=[10000000, 4, 6, 3])), "depths"),
    (dict(num_queries=1000000000), "num_queries"), (dict(num_queries=-5), "num_queries"),
    (dict(decoder_attention_heads=0), "decoder_attention_heads"), (dict(encoder_attention_heads=0),
                                                                   "encoder_attention_heads"),
    (dict(decoder_activation_function="gelu_new"), "decoder_activation_function"),
    (dict(activation_function="gelu_new"), "activation_function"),
    (dict(num_queries=True), "num_queries must be an integer"), (dict(d_model=256.0), "d_model"),
    (dict(decoder_attention_heads=3), "must divide d_model"), (dict(encoder_attention_heads=7), "must divide"),
    (dict(decoder_n_points=[4, 4]), "decoder_n_points"), (dict(decoder_n_points=0), "decoder_n_points"),
    (dict(decoder_n_points=[4, 4, 1000]), "decoder_n_points"),
    (dict(encoder_hidden_dim=30, decoder_in_channels=[30] * 3, encoder_attention_heads=2), "multiple of 4"),
    (dict(encoder_in_channels=[1, 2, 3]), "encoder_in_channels"), (dict(decoder_in_channels=[8, 8, 8]),
                                                                   "decoder_in_channels"),
    (dict(num_feature_levels=4), "num_feature_levels"), (dict(decoder_n_levels=2), "decoder_n_levels"),
    (dict(feat_strides=[4, 8, 16]), "feat_strides"), (dict(encode_proj_layers=[3]), "encode_proj_layers"),
    (dict(encode_proj_layers=[2, 2]), "encode_proj_layers"), (dict(layer_norm_eps=0.0), "layer_norm_eps"),
    (dict(batch_norm_eps=float("nan")), "batch_norm_eps"), (dict(batch_norm_eps="1e-5"), "batch_norm_eps"),
    (dict(hidden_expansion=0.01), "hidden_expansion"), (dict(hidden_expansion=-1.0), "hidden_expansion"),
    (dict(decoder_offset_scale=float("inf")), "decoder_offset_scale"),
    (dict(positional_encoding_temperature=0), "positional_encoding_temperature"),
    (dict(decoder_method="fast"), "decoder_method"), (dict(decoder_eval_idx=2), "decoder_eval_idx"),
    (dict(learn_initial_query=1), "learn_initial_query"), (dict(anchor_image_size=640), "anchor_image_size"),
    (dict(anchor_image_size=[]), "anchor_image_size"), (dict(eval_size="640"), "eval_size"),
    (dict(id2label={"1": "a", "5": "b"}), "id2label keys"), (dict(id2label={"0": 5}), "id2label"),
    (dict(id2label=["cat"]), "id2label"), (dict(num_labels=0), "num_labels"),
    (dict(num_labels=7), "num_labels = 7 disagrees with id2label"), (dict(num_denoising=-1), "num_denoising"),
    (dict(dropout="x"), "dropout"), (dict(with_box_refine="yes"), "with_box_refine"),
    (dict(backbone_config=dict(layer_type="resnext")), "layer_type"),
    (dict(backbone_config=dict(model_type="timm_backbone")), "backbone_config.model_type"),
    (dict(backbone_config=dict(out_indices=[1, 2, 3, 4])), "out_indices"),
    (dict(backbone_config=dict(out_features=["stage4"])), "out_features"),
    (dict(backbone_config=dict(depths=[2, 2, 2])), "depths"),
    (dict(backbone_config=dict(layer_type="bottleneck", hidden_sizes=[2, 512, 1024, 2048])), "hidden_sizes"),
    (dict(backbone_config=dict(embedding_size=1)), "embedding_size"), (dict(backbone_config=[0] * 10 ** 6),
                                                                      "backbone_config must be a mapping"),
    (dict(id2label={str(i): "x" for i in range(C.MAX_CLASSES + 1)}), "id2label"),
]


@pytest.mark.parametrize("fields,needle", HOSTILE, ids=[str(i) for i in range(len(HOSTILE))])
def test_bad_values_are_refused_with_one_line_naming_the_field(fields, needle):
    d = dict(tiny_dict(), **fields)
    if isinstance(fields.get("backbone_config"), dict):                 # change those fields of the backbone's
        d["backbone_config"] = dict(tiny_dict()["backbone_config"], **fields["backbone_config"])
    one_line_error(d, needle)


def test_in_range_but_absurd_config_is_refused_by_its_memory_estimate():
    big = dict(variant_config("r50vd").to_hf_dict(), d_model=8192, decoder_ffn_dim=16384, encoder_hidden_dim=8192,
               decoder_in_channels=[8192] * 3, decoder_layers=32)
    msg = one_line_error(big, "parameters", "GiB", f"{MAX_MODEL_BYTES / 2 ** 30:.0f} GiB")
    print(msg)
    n, param_bytes, act_bytes = estimate_memory(variant_config("r101vd"))
    assert param_bytes + act_bytes < MAX_MODEL_BYTES / 10           # the largest published model, far inside


@pytest.mark.parametrize("case", ["tiny_basic", "tiny_bottleneck"])
def test_parameter_estimate_counts_the_checkpoint(case):
    """estimate_memory's parameter count is the number of values in the checkpoint transformers loaded."""
    tensors, _ = read_safetensors(FIXTURES / case / "model.safetensors")
    n, param_bytes, _ = estimate_memory(config_from_dict(json.loads((FIXTURES / case / "config.json").read_text())))
    assert n == sum(t.size for t in tensors.values()) and param_bytes == 4 * n


def test_activation_estimate_is_an_upper_bound():
    """The activation estimate exceeds what one forward pass actually holds at once (tracemalloc peak)."""
    import tracemalloc
    model = load_model(FIXTURES / "tiny_bottleneck")
    x = np.zeros((1, 3, 256, 192), np.float32)
    tracemalloc.start()
    model(x)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    _, _, act = estimate_memory(model.config, 256, 192)
    print(f"tiny_bottleneck 256x192: measured peak {peak / 2**20:.2f} MiB, estimate {act / 2**20:.2f} MiB")
    assert act >= peak


@pytest.mark.skipif(not hasattr(resource, "RLIMIT_AS") or sys.platform == "darwin",
                    reason="needs an address-space limit (RLIMIT_AS), POSIX / Linux")
def test_a_1kb_hostile_config_fails_in_a_memory_limited_process(tmp_path):
    """The issue's example: decoder_layers 1000000 in a config.json beside garbage weights. Under a 2 GiB
    address-space limit, detect must print one error line naming the field and exit 1 (the config is checked
    before the weights file is even opened)."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(dict(tiny_dict(), decoder_layers=1000000)))
    assert (model / "config.json").stat().st_size < 1500
    (model / "model.safetensors").write_bytes(b"not read")

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))

    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "rtdetrv2_np.detect", str(ROOT / "tests/data/coco_000000039769.png"),
                        "--model", str(model)], capture_output=True, text=True, timeout=300, env=env,
                       preexec_fn=limit, cwd=tmp_path)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1, (r.returncode, r.stderr[-2000:])
    assert lines[0].startswith("error: ") and "decoder_layers = 1000000 is outside the allowed range 1..32" in lines[0]
    assert r.stdout == ""


@pytest.mark.parametrize("content, message", [
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    (" " * ((4 << 20) + 1), "larger than 4 MiB"),
    ("{\"d_model\": 256,", "not valid JSON"),
])
def test_hostile_config_json_files_are_one_line_errors(tmp_path, content, message):
    """A config.json that would recurse, is huge, or is cut off gives one line naming the file, never a
    traceback (weights.read_config)."""
    from rtdetrv2_np.errors import RTDetrError
    from rtdetrv2_np.weights import read_config
    path = tmp_path / "config.json"
    path.write_text(content)
    with pytest.raises(RTDetrError) as e:
        read_config(str(path))
    assert message in str(e.value) and str(e.value).startswith(str(path)) and "\n" not in str(e.value)
