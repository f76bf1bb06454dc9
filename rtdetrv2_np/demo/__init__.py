"""The shipped demo detectors: small RT-DETRv2 models trained on the generated shapes of demo/shapes.py.

They make the package work with nothing but itself (no network, no hub): `python -m rtdetrv2_np.detect --demo`,
`load_model("demo")`. Each lives in a hub-layout folder under demo/models/ (config.json with its own label names,
preprocessor_config.json with its input size, model.safetensors, MODEL_CARD.md with how it was trained and its
measured AP). They know only the four generated shape classes: on photographs they find nothing meaningful.
"""

import os

# name accepted by load_model / --model  ->  folder under demo/models/
DEMO_MODELS = {
    "demo": "shapes_bilinear",              # trained with bilinear sampling (decoder_method "default")
    "demo-discrete": "shapes_discrete",     # the same model fine-tuned with RT-DETRv2's discrete sampling
}


def demo_model_dir(name, check=False):
    """The folder of a shipped demo model ("demo" or "demo-discrete"). check: RTDetrError if it is not shipped."""
    folder = os.path.join(os.path.dirname(os.path.abspath(__file__)), "models", DEMO_MODELS[name])
    if check and not os.path.isfile(os.path.join(folder, "model.safetensors")):
        from ..errors import RTDetrError
        raise RTDetrError(f"{name}: this installation of rtdetrv2_np does not ship the {name} model ({folder} has "
                          f"no model.safetensors); shipped: " +
                          (", ".join(n for n in DEMO_MODELS if os.path.isfile(os.path.join(
                              os.path.dirname(folder), DEMO_MODELS[n], "model.safetensors"))) or "none"))
    return folder
