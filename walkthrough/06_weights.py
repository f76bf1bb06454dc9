# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 06 · Weights: from hub and official checkpoints to arrays
#
# *Estimated reading time: 25 minutes (running it: under a minute on 2 CPU cores).*
#
# **Learning goals.** After this notebook you can
# 1. read a Hugging Face model folder (config.json + model.safetensors) into NumPy arrays and the package's params
#    tree, and say which tensor feeds which layer;
# 2. recognise the key renames transformers 5.x applies while loading, and why the files keep the 4.x names;
# 3. map an official lyuwenyu/RT-DETR `.pth` onto the hub names (renames, the fused q/k/v split, what is dropped);
# 4. save a model and load it back, checking that nothing changed.
#
# **References.** transformers `models/rt_detr_v2/modeling_rt_detr_v2.py` (the names) and
# `convert_rt_detr_v2_weights_to_hf.py` (the official → hub mapping); `conversion_mapping.py` (the 5.x renames);
# the package docstring's reference list; the safetensors format (a JSON header of names, dtypes, shapes and offsets,
# then the raw bytes).
#
# Code: `rtdetrv2_np/weights.py` (`expected_shapes`, `check_and_clean`, `params_tree`), `loading.py`
# (`load_model`), `hub.py` (the cache), `pth.py` (`load_pth`, reading `torch.save` files without torch),
# `convert.py` (official → hub names).

# %%
import time
from pathlib import Path

import numpy as np

import rtdetrv2_np
from rtdetrv2_np import plotting

T0 = time.time()
REPO = Path(rtdetrv2_np.__file__).resolve().parents[1]
model, _ = plotting.teaching_model()          # the shipped demo detector (notebook 00)
print(plotting.weights_stamp(model))


def check(name, mine, package, atol=0.0):
    """The walkthrough's equality check: print the largest difference, fail if it exceeds atol."""
    diff = float(np.abs(np.asarray(mine, np.float64) - np.asarray(package, np.float64)).max())
    print(f"{'OK' if diff <= atol else 'NOT OK'} {name}: max |by hand - package| = {diff:.3g}")
    assert diff <= atol, name

# %% [markdown]
# ## 1. What a hub model folder holds
#
# `PekingU/rtdetr_v2_r18vd` on the Hugging Face hub is two files that matter: **config.json** (the architecture:
# `RTDetrV2Config` with a ResNet `backbone_config`) and **model.safetensors** (529 tensors, ~80 MB: 483 float32 weights and buffers, plus 46 int64 BatchNorm step counters that inference ignores).
# `load_model("PekingU/rtdetr_v2_r18vd")` finds them in the hub cache
# (`~/.cache/huggingface/hub/models--PekingU--rtdetr_v2_r18vd/snapshots/<commit>/`, the layout transformers uses)
# or downloads them; `teaching_model()` only looks in the cache (HF_HUB_OFFLINE semantics).
#
# The demo model this walkthrough uses ships inside the package in exactly this layout, with two more files:
# `preprocessor_config.json` (its input size, as the hub's image processor reads it) and `MODEL_CARD.md` (how it
# was trained, how well it does):

# %%
demo_folder = Path(model.source).parent
for f in sorted(demo_folder.iterdir()):
    print(f"  {f.name:26s} {f.stat().st_size:>10,d} bytes")

# %% [markdown]
# Which tensors an architecture needs is a pure function of its config, `expected_shapes(cfg)`:

# %%
from rtdetrv2_np.weights import expected_shapes

cfg = model.config
shapes = expected_shapes(cfg)
print(f"{len(shapes)} tensors, {sum(np.prod(s) for s in shapes.values()) / 1e6:.2f} M numbers")
for name in ["model.backbone.model.embedder.embedder.0.convolution.weight",
             "model.encoder.encoder.0.layers.0.self_attn.q_proj.weight",
             "model.encoder.fpn_blocks.0.bottlenecks.0.conv1.conv.weight",
             "model.enc_score_head.weight",
             "model.decoder.layers.0.encoder_attn.sampling_offsets.weight",
             "model.decoder.layers.0.encoder_attn.n_points_scale",
             "model.decoder.bbox_embed.2.layers.2.weight"]:
    print(f"  {name:62s} {list(shapes[name])}")

# %% [markdown]
# Read one line: `sampling_offsets.weight [M · ΣK_l · 2, C]` is the linear layer of notebook 03 that maps a C-d
# query to M heads × ΣK_l points × (x, y) offsets (r18vd: [192, 256] = 8 heads × 12 points × 2 from 256; the demo
# model's numbers are printed above); `n_points_scale [ΣK_l]` is the 1/K_l buffer.
#
# Grouped by the first parts of the name — the same components as notebook 00's parameter count:

# %%
from collections import Counter

groups = Counter()
for name, s in shapes.items():
    parts = name.split(".")
    groups[".".join(parts[:3] if parts[1] in ("backbone", "decoder", "encoder") else parts[:2])] += int(np.prod(s))
for g, n in sorted(groups.items(), key=lambda kv: -kv[1]):
    print(f"  {g:34s} {n / 1e6:6.3f} M")

# %% [markdown]
# ## 2. From flat names to the params tree
#
# The model functions take a nested params tree that mirrors the names: `"model.decoder.layers.0.fc1.weight"`
# becomes `params["model"]["decoder"]["layers"][0]["fc1"]["weight"]`; numbered parts become list items. That is
# all `params_tree` does (picoGPT's idea: the checkpoint's structure *is* the model's parameter structure, so a
# reader can grep transformers with the same strings).

# %%
from rtdetrv2_np.weights import params_tree

flat = {"model.decoder.layers.0.fc1.weight": np.zeros((2, 2)), "model.decoder.layers.1.fc1.weight": np.ones((2, 2)),
        "model.enc_output.0.bias": np.zeros(3), "model.enc_output.1.weight": np.ones(3)}
tree = params_tree(flat)
print(tree["model"]["decoder"]["layers"][1]["fc1"]["weight"])
print(type(tree["model"]["enc_output"]), len(tree["model"]["enc_output"]))

# %% [markdown]
# ## 3. Save a model in the hub layout and load it back
#
# We write this notebook's model as a hub folder — `config.json` from `Config.to_hf_dict()`, the tensors with
# `safetensors.numpy.save_file` under their hub names (`weights.flatten_params` is the inverse of `params_tree`) —
# and read it back with `load_model`. `load_model` checks every tensor against `expected_shapes` of the config: a
# missing, extra or mis-shaped tensor is an `RTDetrError` naming it.

# %%
import json
import tempfile

from safetensors import safe_open
from safetensors.numpy import save_file

from rtdetrv2_np import RTDetrError, load_model
from rtdetrv2_np.weights import flatten_params

tmp = tempfile.TemporaryDirectory()
folder = Path(tmp.name) / "my_model"
folder.mkdir()
(folder / "config.json").write_text(json.dumps(cfg.to_hf_dict(), indent=1))
tensors = flatten_params(model.params)                               # {hub name: array}
save_file(tensors, str(folder / "model.safetensors"))
print(f"wrote {len(tensors)} tensors, {(folder / 'model.safetensors').stat().st_size / 1e6:.1f} MB")

with safe_open(str(folder / "model.safetensors"), framework="numpy") as f:       # the file's header, no data read
    name = "model.decoder.layers.0.encoder_attn.attention_weights.weight"
    print("a header entry:", name, f.get_slice(name).get_shape(), f.get_slice(name).get_dtype())

reloaded = load_model(folder)
print("loaded:", reloaded.source.replace(tmp.name, "<tmp>"))
for name, a in flatten_params(reloaded.params).items():
    assert np.array_equal(a, tensors[name]), name
print("all", len(tensors), "tensors identical")

x = np.random.default_rng(0).random((1, 3, 128, 128), dtype=np.float32)        # small, yet 336 positions >= Nq
check("logits, saved and reloaded", reloaded(x).logits, model(x).logits)

# %% [markdown]
# A broken file fails loudly, naming the tensor:

# %%
del tensors["model.enc_score_head.bias"]
save_file(tensors, str(folder / "model.safetensors"))
try:
    load_model(folder)
except RTDetrError as e:
    print("RTDetrError:", str(e).replace(tmp.name, "<tmp>"))

# %% [markdown]
# ## 4. transformers 5.x renames keys while loading
#
# The hub files were written by transformers 4.x and keep its names. transformers 5.x uses other names *inside*
# the model and translates at load time (its `conversion_mapping.py` rules for `rt_detr`, reversed on save):
#
# | rule | 4.x name in the file | 5.x name at run time |
# | --- | --- | --- |
# | 1 | `...self_attn.out_proj.weight` | `...self_attn.o_proj.weight` (the MSDA's `output_proj` does not match) |
# | 2 | `...layers.0.fc1.weight` | `...layers.0.mlp.fc1.weight` (fc2 likewise) |
# | 3 | `model.encoder.encoder.0.layers...` | `model.encoder.aifi.0.layers...` |
#
# This package reads the files, so it keeps the 4.x names (`weights.py` says so). The three rules as code, and how
# many of the file's names they touch:

# %%
import re

RULES_5X = [(r"out_proj", "o_proj"), (r"layers\.(\d+)\.(fc[12])", r"layers.\1.mlp.\2"),
            (r"encoder\.encoder\.(\d+)\.layers", r"encoder.aifi.\1.layers")]


def to_5x(name):
    for pattern, repl in RULES_5X:
        name = re.sub(pattern, repl, name)
    return name


renamed = {n: to_5x(n) for n in shapes if to_5x(n) != n}
print(f"{len(renamed)} of {len(shapes)} names differ at run time in transformers 5.x, e.g.")
for n in list(renamed)[:2] + [n for n in renamed if "decoder.layers.0" in n][:3]:
    print(f"  {n}\n    -> {renamed[n]}")

# %% [markdown]
# transformers 5.x also *ties* a top-level `class_embed.*` / `bbox_embed.*` to `model.decoder.*`; a file saved
# by 5.x may carry either copy, and `check_and_clean` accepts both.
#
# ## 5. Official `.pth` checkpoints
#
# The original code (lyuwenyu/RT-DETR) releases `torch.save` files: a zip archive holding a pickle and raw tensor
# bytes. `pth.load_pth` reads them **without torch and without running pickled code** (only the globals needed to
# rebuild tensors are allowed), and picks `checkpoint["ema"]["module"]` (else `["model"]`), as the official deploy
# script does. The names are the official module tree's:
#
# | official | hub |
# | --- | --- |
# | `backbone.conv1.conv1_{k+1}.conv.weight` | `model.backbone.model.embedder.embedder.{k}.convolution.weight` |
# | `backbone.res_layers.{s}.blocks.{b}.branch2{a,b}.conv.weight` | `...encoder.stages.{s}.layers.{b}.layer.{0,1}.convolution.weight` |
# | `backbone.res_layers.{s≥1}.blocks.0.short.conv.conv.weight` | `...stages.{s}.layers.0.shortcut.1.convolution.weight` |
# | `encoder.input_proj.{i}.conv.weight` | `model.encoder_input_proj.{i}.0.weight` |
# | `encoder.encoder.0.layers.0.self_attn.in_proj_weight` `[3C, C]` | `...self_attn.{q,k,v}_proj.weight`, rows `[0:C]`, `[C:2C]`, `[2C:3C]` |
# | `...linear1` / `linear2` / `norm1` / `norm2` | `...fc1` / `fc2` / `self_attn_layer_norm` / `final_layer_norm` |
# | `decoder.decoder.layers.{l}.cross_attn.*` | `model.decoder.layers.{l}.encoder_attn.*` |
# | `...cross_attn.num_points_scale` | `...encoder_attn.n_points_scale` |
# | `decoder.dec_score_head.{l}` / `dec_bbox_head.{l}` | `model.decoder.class_embed.{l}` / `bbox_embed.{l}` |
# | `decoder.enc_output.proj` / `.norm` | `model.enc_output.0` / `.1` |
# | `decoder.anchors`, `decoder.valid_mask`, `*.num_batches_tracked` | dropped (anchors are recomputed) |
#
# `rtdetrv2_np/convert.py` holds this as an explicit rule table (`RULES`: pattern, template, action). Applied to a
# few official names — note how the fused attention input projection is split into three:

# %%
from rtdetrv2_np.official import RULES, rename_official

C = 4
official = {
    "backbone.conv1.conv1_1.conv.weight": np.zeros((2, 3, 3, 3), np.float32),
    "backbone.res_layers.1.blocks.0.short.conv.conv.weight": np.zeros((4, 2, 1, 1), np.float32),
    "encoder.encoder.0.layers.0.self_attn.in_proj_weight": np.arange(3 * C * C, dtype=np.float32).reshape(3 * C, C),
    "decoder.decoder.layers.0.cross_attn.num_points_scale": np.full(12, 0.25, np.float32),
    "decoder.dec_score_head.0.weight": np.zeros((80, C), np.float32),
    "decoder.input_proj.0.norm.num_batches_tracked": np.array(7),
}
hub, aside = rename_official(official)
for name, a in hub.items():
    print(f"  {name:66s} {list(a.shape)}")
W = official["encoder.encoder.0.layers.0.self_attn.in_proj_weight"]
check("k_proj = rows C..2C of in_proj", hub["model.encoder.encoder.0.layers.0.self_attn.k_proj.weight"], W[C:2 * C])
print(f"({len(RULES)} rules in the table; num_batches_tracked was dropped)")

# %% [markdown]
# The repository's test fixtures include a tiny official-layout checkpoint (`tests/fixtures/official/tiny_basic/`,
# written by `tools/make_official_pth.py` from a recorded tiny model) and the same model in hub layout
# (`tests/fixtures/reference/tiny_basic/`). Converting the first must give the second, tensor for tensor — and
# `load_model` reads a `.pth` directly (the config.json beside it gives the architecture):

# %%
from rtdetrv2_np.official import load_official
from rtdetrv2_np.weights import read_safetensors
from rtdetrv2_np.pth import load_pth

pth = REPO / "tests" / "fixtures" / "official" / "tiny_basic" / "tiny_basic.pth"
hub_file = REPO / "tests" / "fixtures" / "reference" / "tiny_basic" / "model.safetensors"
if pth.exists() and hub_file.exists():
    sd = load_pth(pth)
    print(f"{pth.name}: {len(sd)} official tensors, e.g. {list(sd)[:2]}")
    cfg_tiny, converted, report = load_official(pth)
    print("architecture", str(report["architecture"]).replace(str(REPO), "<repo>"),
          "| anchors in the file vs recomputed:", report["anchors"])
    expected, _ = read_safetensors(hub_file)
    expected = {k: v for k, v in expected.items() if not k.endswith("num_batches_tracked")}
    print(f"{len(converted)} converted tensors, {len(expected)} in the hub-layout file")
    assert set(converted) == set(expected)
    check("all tensors, converted .pth vs hub file", np.concatenate([converted[k].ravel() for k in sorted(expected)]),
          np.concatenate([expected[k].ravel() for k in sorted(expected)]))
    tiny = load_model(pth)
    x = np.random.default_rng(1).random((1, 3, 64, 64), dtype=np.float32)
    check("tiny model: .pth vs hub folder", tiny(x).pred_boxes, load_model(hub_file.parent)(x).pred_boxes)
else:
    print("the tiny official fixture is not in this checkout; see tests/fixtures/official")

# %% [markdown]
# To convert a real release once and keep a single self-describing file (tensors + config in the safetensors
# metadata), use the command line:
#
# ```bash
# python -m rtdetrv2_np.convert rtdetrv2_r18vd_120e_coco_rerun_48.1.pth       # -> weights/<name>.safetensors
# python -m rtdetrv2_np.convert rtdetrv2_r50vd_m_dsp_3x_coco.pth --method discrete
# ```
#
# ## Summary
#
# * A hub model is config.json + model.safetensors with transformers 4.x names; `expected_shapes(cfg)` lists every
#   tensor an architecture needs, `params_tree` nests them for the model functions.
# * transformers 5.x renames three patterns at load time; the files (and this package) keep the 4.x names.
# * Official `.pth` files map onto the hub names by a fixed table; the only non-rename is the q/k/v split of the
#   fused `in_proj`; anchors, valid masks and BatchNorm counters are dropped.
#
# ## Exercises
#
# Answers: `walkthrough/solutions/06_weights.py`.
#
# 1. Which tensors of `expected_shapes` does inference never read? (Hint: `denoising_class_embed`.)
# 2. Change one entry of `config.json` in the saved folder (e.g. `decoder_layers` 3 → 4) and load it. What does
#    the error say?
# 3. Write the inverse of `to_5x` and check that it maps every 5.x name back.
# 4. Open the tiny `.pth` with Python's `zipfile` and list its entries. Where are the tensor bytes?

# %%
tmp.cleanup()
print(f"notebook ran in {time.time() - T0:.1f} s")
