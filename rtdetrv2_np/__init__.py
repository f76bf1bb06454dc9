"""rtdetrv2_np: the RT-DETRv2 real-time object detector (Lv et al., arXiv 2407.17140) in plain, vectorized NumPy.

    from rtdetrv2_np import load_model
    model = load_model("path/to/model_dir")     # config.json + model.safetensors, as on the Hugging Face hub
    out = model(pixel_values)                   # float32 [B, 3, H, W] in [0, 1]
    out.logits, out.pred_boxes                  # [B, 300, NC], [B, 300, 4] (cx, cy, w, h, normalised)
"""

from .errors import RTDetrError
from .loading import build_model, load_model
from .model import Config, DetectionOutput, Model, forward, variant_config

__all__ = ["Config", "DetectionOutput", "Model", "RTDetrError", "build_model", "forward", "load_model",
           "variant_config"]
