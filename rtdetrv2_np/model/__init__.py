"""The RT-DETRv2 model: one module per component of the paper, pure functions over a params tree.

    detector.py              forward(): backbone -> hybrid encoder -> query selection -> decoder ([1] §4.1, Fig. 4)
    backbone.py              ResNet-vd ([6], [7])
    hybrid_encoder.py        AIFI + CCFF ([1] §4.2, Fig. 5; named CCFM in [1] v1-v2 and in ccfm())
    query_selection.py       anchors and uncertainty-minimal query selection ([1] §4.3)
    decoder.py               decoder layers and iterative box refinement ([1] §4.1, [2] §4.2)
    deformable_attention.py  multi-scale deformable attention, bilinear and discrete sampling ([2] Eq. (3), [3] §2.1)
    nn.py                    primitives (convolution by im2col + BLAS, norms, activations, attention, top-k)
    config.py                the architecture description read from config.json

Nothing here reads files: loading a checkpoint is rtdetrv2_np.loading. The numbered references [1]-[11] and the
glossary of shape letters: the package docstring (rtdetrv2_np/__init__.py).
"""

from .config import Config, variant_config
from .detector import DetectionOutput, Model, forward

__all__ = ["Config", "DetectionOutput", "Model", "forward", "variant_config"]
