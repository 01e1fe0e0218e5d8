"""GoogLeNet (Szegedy et al., "Going deeper with convolutions", CVPR 2015, arXiv 1409.4842), two ways.

``googlenet`` is torchvision's GoogLeNet, the model whose released weights everyone uses. It differs from the
paper (Table 1, Fig. 3) in four places, all inherited from the TF-slim/BN re-implementation torchvision ported:

- the "5x5" branch of every Inception module is a 3x3 convolution (a known bug kept for the weights,
  pytorch/vision#906); ``branch5x5_kernel=5`` restores the paper's 5x5;
- every convolution is followed by batch norm (eps 1e-3, convs without bias) and there is no LRN;
- the max pool before Inception (5a) is 2x2/2 instead of 3x3/2 (both give 7x7 at 224);
- dropout before the classifier is 0.2 instead of 0.4, and the auxiliary classifiers pool adaptively to 4x4
  instead of with a 5x5/3 average pool (the same 4x4 grid at 224).

Submodules are registered in torchvision's order, with its shapes and even its key names, so torchvision's
state dict maps onto ``googlenet`` by order (:mod:`inception_models.convert`) and computes the same logits.

``googlenet_paper`` is the network of the paper: a real 5x5 branch, LocalResponseNorm after the stem's first
max pool and after its 3x3 convolution (Fig. 3), no batch norm (convs carry a bias), 3x3/2 max pools
everywhere, dropout 0.4, and two auxiliary classifiers on Inception (4a) and (4d) (sec. 5: 5x5/3 average
pool, 1x1 conv 128, FC 1024, dropout 0.7, FC) whose losses are weighted by :data:`AUX_LOSS_WEIGHT` (0.3).

Reference figures (``shared/REFERENCES.md``): torchvision 0.29.1 ``googlenet`` has 6,624,904 parameters without
and 13,004,888 with its aux heads (aux1 3,188,968; aux2 3,191,016), 1.498 GMACs at 224; with the branch really
5x5 it has 7,005,832 parameters and 1.583 GMACs. The paper's Table 1 sums to about 6.8M parameters (no aux
heads) and the text says about 1.5 billion multiply-adds.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import torch
from torch import nn

from inception_models.base import IMAGENET_MEAN, IMAGENET_STD, InceptionNetWithAux, make_head  # noqa: F401
from inception_models.layers import TF_BN_EPS, ConvNormAct, NormKind, check_norm, scale_width
from inception_models.registry import register_variant

__all__ = [
    "AUX_LOSS_WEIGHT",
    "InceptionModule",
    "AuxiliaryClassifier",
    "GOOGLENET",
    "GOOGLENET_PAPER",
    "GoogLeNet",
    "GoogLeNetSpec",
    "GoogLeNetPaper",
    "googlenet",
    "googlenet_paper",
]

# Sec. 5: "during training, their loss gets added to the total loss of the network with a discount weight
# (the losses of the auxiliary classifiers were weighted by 0.3)". The trainer reads it from here.
AUX_LOSS_WEIGHT = 0.3

# Found by trying every size from 1 to 259 (all sizes from the minimum up work). torchvision's topology: 15;
# at 14 the 3x3/2 max pool before (4a) sees a 1x1 grid and torch fails. The paper's 3x3/2 pool before (5a)
# needs 31; its aux heads' 5x5/3 average pool needs a 3x3 grid at (4a): 47.
MIN_INPUT_SIZE = 15
MIN_INPUT_SIZE_PAPER = 31
MIN_INPUT_SIZE_PAPER_AUX = 47

# Table 1, one row per Inception module: #1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj.
# "maxpool" rows are the stride-2 max pools between the grid stages (28 -> 14 -> 7 at 224).
GOOGLENET_BODY: tuple[tuple[str, tuple[int, int, int, int, int, int] | None], ...] = (
    ("inception3a", (64, 96, 128, 16, 32, 32)),
    ("inception3b", (128, 128, 192, 32, 96, 64)),
    ("maxpool3", None),
    ("inception4a", (192, 96, 208, 16, 48, 64)),
    ("inception4b", (160, 112, 224, 24, 64, 64)),
    ("inception4c", (128, 128, 256, 24, 64, 64)),
    ("inception4d", (112, 144, 288, 32, 64, 64)),
    ("inception4e", (256, 160, 320, 32, 128, 128)),
    ("maxpool4", None),
    ("inception5a", (256, 160, 320, 32, 128, 128)),
    ("inception5b", (384, 192, 384, 48, 128, 128)),
)
# The stem's widths (Table 1): conv 7x7/2 (64), conv 1x1 reduce (64), conv 3x3 (192).
STEM_WIDTHS = (64, 64, 192)
# Sec. 5: the auxiliary classifiers sit on the outputs of (4a) and (4d).
AUX_TAPS: dict[str, str] = {"inception4a": "aux1", "inception4d": "aux2"}

AuxPool = Literal["adaptive", "paper"]


@dataclass(frozen=True)
class GoogLeNetSpec:
    """The table a GoogLeNet variant is built from (Table 1), and what the paper and torchvision's port set apart.

    ``stem_widths`` and ``body`` are :data:`STEM_WIDTHS` and :data:`GOOGLENET_BODY`. ``aux_logits``,
    ``drop_rate``, ``norm``, ``branch5x5_kernel`` and ``lrn`` are the defaults of those knobs;
    ``maxpool4_kernel`` is the pool before (5a) (2 in torchvision, 3 in the paper), ``aux_pool`` and
    ``aux_drop_rate`` the auxiliary heads' pooling and dropout, ``bn_eps`` the batch norms' epsilon.
    """

    stem_widths: tuple[int, int, int] = STEM_WIDTHS
    body: tuple[tuple[str, tuple[int, int, int, int, int, int] | None], ...] = GOOGLENET_BODY
    aux_logits: bool = False
    drop_rate: float = 0.2
    norm: NormKind = "bn"
    branch5x5_kernel: int = 3
    lrn: bool = False
    maxpool4_kernel: int = 2
    aux_pool: AuxPool = "adaptive"
    aux_drop_rate: float = 0.7
    bn_eps: float = TF_BN_EPS


# torchvision's googlenet, and the paper's network: a real 5x5 branch, LRN, no BN, dropout 0.4, 3x3/2 pools,
# the aux heads on by default with the 5x5/3 average pool.
GOOGLENET = GoogLeNetSpec()
GOOGLENET_PAPER = replace(GOOGLENET, aux_logits=True, drop_rate=0.4, norm="none", branch5x5_kernel=5, lrn=True,
                          maxpool4_kernel=3, aux_pool="paper")


def _max_pool(kernel_size: int) -> nn.MaxPool2d:
    # ceil_mode as Caffe, which both the paper's network and torchvision's port follow: 112 -> 56 -> 28 -> 14 -> 7.
    return nn.MaxPool2d(kernel_size, stride=2, ceil_mode=True)


def _local_response_norm() -> nn.LocalResponseNorm:
    # The paper gives no LRN settings; these are AlexNet's as in BVLC's Caffe GoogLeNet (size 5, alpha 1e-4,
    # beta 0.75, k 1; PyTorch, like Caffe, divides alpha by the size).
    return nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)


class InceptionModule(nn.Module):
    """Inception module with dimension reductions (Fig. 2b): 1x1 | 1x1 -> 3x3 | 1x1 -> "5x5" | 3x3 pool -> 1x1.

    ``branch5x5_kernel`` is the kernel of the third branch: 5 in the paper, 3 in torchvision's port
    (pytorch/vision#906). Branch names and order are torchvision's (``branch1`` ... ``branch4``).
    """

    def __init__(
        self,
        in_channels: int,
        ch1x1: int,
        ch3x3red: int,
        ch3x3: int,
        ch5x5red: int,
        ch5x5: int,
        pool_proj: int,
        *,
        branch5x5_kernel: int = 5,
        **conv: object,
    ) -> None:
        super().__init__()
        self.branch1 = ConvNormAct(in_channels, ch1x1, 1, **conv)
        self.branch2 = nn.Sequential(
            ConvNormAct(in_channels, ch3x3red, 1, **conv),
            ConvNormAct(ch3x3red, ch3x3, 3, padding=1, **conv),
        )
        self.branch3 = nn.Sequential(
            ConvNormAct(in_channels, ch5x5red, 1, **conv),
            ConvNormAct(ch5x5red, ch5x5, branch5x5_kernel, padding=branch5x5_kernel // 2, **conv),
        )
        self.branch4 = nn.Sequential(
            nn.MaxPool2d(3, stride=1, padding=1, ceil_mode=True),
            ConvNormAct(in_channels, pool_proj, 1, **conv),
        )
        self.out_channels = ch1x1 + ch3x3 + ch5x5 + pool_proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat((self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)), 1)


class AuxiliaryClassifier(nn.Module):
    """Auxiliary classifier (sec. 5): average pool to 4x4, 1x1 conv, FC + ReLU, dropout, FC.

    ``pool="paper"`` is the paper's 5x5/3 average pool (4x4 from the 14x14 grid at 224), followed by an
    adaptive pool to 4x4 that does nothing at 224 and lets other input sizes reach the fixed-width FC.
    ``pool="adaptive"`` is torchvision's adaptive average pool to 4x4 (windows of 4 or 5 rows at 14x14, so it
    is not the same function as the paper's). ``hidden_bn=True`` batch-normalises the hidden FC before its ReLU
    (the Inception-v3 paper's "BN-auxiliary", sec. 7). Parameter order and names are torchvision's
    ``InceptionAux`` (with ``hidden_bn`` off).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        pool: AuxPool = "adaptive",
        conv_channels: int = 128,
        hidden: int = 1024,
        drop_rate: float = 0.7,
        hidden_bn: bool = False,
        **conv: object,
    ) -> None:
        super().__init__()
        if pool == "paper":
            self.pool: nn.Module = nn.Sequential(nn.AvgPool2d(5, stride=3, ceil_mode=True), nn.AdaptiveAvgPool2d(4))
        elif pool == "adaptive":
            self.pool = nn.AdaptiveAvgPool2d(4)
        else:
            raise ValueError(f"pool={pool!r} is not supported; use 'adaptive' (torchvision) or 'paper' (5x5/3)")
        self.conv = ConvNormAct(in_channels, conv_channels, 1, **conv)
        self.flatten = nn.Flatten(1)
        self.fc1 = nn.Linear(conv_channels * 16, hidden)
        self.fc1_norm: nn.Module = (nn.BatchNorm1d(hidden, eps=float(conv.get("eps", TF_BN_EPS))) if hidden_bn
                                    else nn.Identity())
        self.act = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(drop_rate)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.flatten(self.conv(self.pool(x)))
        return self.fc2(self.dropout(self.act(self.fc1_norm(self.fc1(x)))))


class GoogLeNet(InceptionNetWithAux):
    """GoogLeNet (Szegedy et al. 2014, Table 1): stem, Inception (3a)-(5b), global average pool, classifier.

    The defaults build torchvision's ``googlenet``: its submodules, in its registration order (stem, the nine
    Inception modules, ``aux1``, ``aux2``, ``fc``) and with its shapes, so its state dict maps by order.
    ``forward_features`` returns the 1024-channel map before the global pool (7x7 at 224).
    In training mode with ``aux_logits`` the forward returns ``InceptionOutputs(logits, (aux1, aux2))``.

    ``spec`` (default :data:`GOOGLENET`; :class:`GoogLeNetPaper`'s is :data:`GOOGLENET_PAPER`) gives the widths
    and the variant's defaults; a knob left at None takes the spec's. ``lrn`` adds LocalResponseNorm after the
    stem's first max pool and after its 3x3 conv; ``aux_norm`` sets the heads' normalisation: None follows
    ``norm`` (the reference), ``"none"`` removes it from the heads, ``"bn"`` batch-normalises every head layer,
    the hidden FC too (the Inception-v3 paper's "BN-auxiliary"). ``width_mult`` scales every convolution's
    width (stem, branches, aux 1x1 conv) and the aux FC's 1024. ``transform_input`` re-maps ImageNet-normalised
    RGB inputs to the [-1, 1] scaling torchvision's pretrained weights were trained with (torchvision's
    ``transform_input``).
    """

    model_name = "googlenet"
    default_spec = GOOGLENET
    # The stem (Table 1's rows above (3a); ``norm1``/``norm2`` are the paper's LRN or identities), then the body.
    feature_stages = (
        "conv1", "maxpool1", "norm1", "conv2", "conv3", "norm2", "maxpool2", *(name for name, _ in GOOGLENET_BODY)
    )
    aux_taps = AUX_TAPS

    def __init__(
        self,
        spec: GoogLeNetSpec | None = None,
        *,
        num_classes: int = 1000,
        in_chans: int = 3,
        aux_logits: bool | None = None,
        transform_input: bool = False,
        drop_rate: float | None = None,
        norm: NormKind | None = None,
        width_mult: float = 1.0,
        branch5x5_kernel: int | None = None,
        lrn: bool | None = None,
        aux_norm: NormKind | None = None,
    ) -> None:
        knobs = dict(aux_logits=aux_logits, drop_rate=drop_rate, norm=norm, branch5x5_kernel=branch5x5_kernel, lrn=lrn)
        spec = replace(spec or self.default_spec, **{k: v for k, v in knobs.items() if v is not None})
        if spec.branch5x5_kernel < 1 or spec.branch5x5_kernel % 2 == 0:
            raise ValueError(f"branch5x5_kernel must be a positive odd size (3 or 5), got {spec.branch5x5_kernel}")
        if spec.maxpool4_kernel not in (2, 3):
            raise ValueError(f"maxpool4_kernel must be 2 (torchvision) or 3 (the paper), got {spec.maxpool4_kernel}")
        if spec.aux_pool not in ("adaptive", "paper"):
            raise ValueError(f"aux_pool={spec.aux_pool!r} is not supported; use 'adaptive' (torchvision) or 'paper'")
        if spec.aux_logits and spec.aux_pool == "paper":
            min_size = MIN_INPUT_SIZE_PAPER_AUX
        else:
            min_size = MIN_INPUT_SIZE if spec.maxpool4_kernel == 2 else MIN_INPUT_SIZE_PAPER
        super().__init__(
            num_classes=num_classes,
            in_chans=in_chans,
            min_input_size=min_size,
            aux_logits=spec.aux_logits,
            transform_input=transform_input,
        )
        conv = dict(norm=check_norm(spec.norm), eps=spec.bn_eps)
        c1, c2, c3 = (scale_width(c, width_mult) for c in spec.stem_widths)

        self.conv1 = ConvNormAct(in_chans, c1, 7, stride=2, padding=3, **conv)
        self.maxpool1 = _max_pool(3)
        self.norm1 = _local_response_norm() if spec.lrn else nn.Identity()
        self.conv2 = ConvNormAct(c1, c2, 1, **conv)
        self.conv3 = ConvNormAct(c2, c3, 3, padding=1, **conv)
        self.norm2 = _local_response_norm() if spec.lrn else nn.Identity()
        self.maxpool2 = _max_pool(3)

        channels, tap_channels = c3, {}
        for name, widths in spec.body:
            if widths is None:
                self.add_module(name, _max_pool(spec.maxpool4_kernel if name == "maxpool4" else 3))
                continue
            block = InceptionModule(
                channels, *(scale_width(w, width_mult) for w in widths), branch5x5_kernel=spec.branch5x5_kernel, **conv
            )
            self.add_module(name, block)
            channels = tap_channels[name] = block.out_channels

        # torchvision registers the aux heads after (5b) and before the classifier: keep that order.
        self.aux1: AuxiliaryClassifier | None = None
        self.aux2: AuxiliaryClassifier | None = None
        head_conv = conv if aux_norm is None else dict(conv, norm=check_norm(aux_norm, "aux_norm"))
        if spec.aux_logits:
            for tap, head in AUX_TAPS.items():
                setattr(self, head, AuxiliaryClassifier(
                    tap_channels[tap], num_classes, pool=spec.aux_pool, conv_channels=scale_width(128, width_mult),
                    hidden=scale_width(1024, width_mult), drop_rate=spec.aux_drop_rate, hidden_bn=aux_norm == "bn",
                    **head_conv,
                ))
        self.num_features = channels
        self.global_pool, self.dropout, self.fc = make_head(channels, num_classes, spec.drop_rate)
        self._init_weights()

    def _init_weights(self) -> None:
        # torchvision's googlenet(init_weights=True): truncated normal, std 0.01, for every conv and linear.
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, mean=0.0, std=0.01, a=-2, b=2)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)


class GoogLeNetPaper(GoogLeNet):
    """The GoogLeNet of the paper (Table 1, Fig. 3; sec. 5 for the auxiliary classifiers).

    What differs from torchvision's ``googlenet`` and why: the paper's "5x5" branch is really 5x5 (torchvision
    kept a 3x3 to match the weights it ported, pytorch/vision#906); the paper (2014) predates batch norm, so
    convolutions carry a bias and there is no BN, but LocalResponseNorm follows the stem's first max pool and
    its 3x3 conv (Fig. 3); the pool before (5a) is 3x3/2 as Table 1 says (torchvision: 2x2/2); dropout is 40%
    (torchvision: 20%); the aux heads open with the paper's 5x5/3 average pool. The aux heads are on by default,
    as the paper trains with them; their losses are weighted by ``AUX_LOSS_WEIGHT`` = 0.3 (sec. 5) and they
    are dropped at inference (eval mode returns the main logits only).

    Initialisation is BVLC's Caffe replication's: Xavier (uniform, variance 1 / fan_in) weights, conv bias 0.2.
    """

    model_name = "googlenet_paper"
    default_spec = GOOGLENET_PAPER
    AUX_LOSS_WEIGHT = AUX_LOSS_WEIGHT

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                fan_in = m.weight[0].numel()
                bound = (3.0 / fan_in) ** 0.5
                nn.init.uniform_(m.weight, -bound, bound)
                if m.bias is not None:
                    nn.init.constant_(m.bias, 0.2 if isinstance(m, nn.Conv2d) else 0.0)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)


PAPER = "Going deeper with convolutions (Szegedy et al.)"

googlenet = register_variant(
    GoogLeNet,
    GOOGLENET,
    "googlenet",
    """GoogLeNet as torchvision builds it (BN, 3x3 "5x5" branch): 6.6M parameters, 1.50 GMACs at 224.

    ``aux_logits=True`` adds torchvision's two auxiliary classifiers (6.4M parameters, used in training only).
    ``branch5x5_kernel=5`` makes the "5x5" branch really 5x5, as in the paper (7,005,832 parameters,
    1.583 GMACs). ``transform_input=True`` is needed to reproduce torchvision's pretrained weights on
    ImageNet-normalised inputs. ``aux_norm`` ("bn" or "none") overrides the heads' normalisation; "bn" also
    batch-normalises their hidden FC (the Inception-v3 paper's "BN-auxiliary").
    """,
    knobs=("num_classes", "in_chans", "aux_logits", "transform_input", "drop_rate", "norm", "width_mult",
           "branch5x5_kernel", "aux_norm"),
    paper=PAPER,
    year=2014,
    input_size=224,
    min_input_size=MIN_INPUT_SIZE,
    reference_params=6_624_904,
    reference_gmacs=1.498,
    reference_source="torchvision 0.29.1 googlenet(aux_logits=False), measured (conv + linear MACs, batch 1); "
    "shared/REFERENCES.md. With aux_logits=True: 13,004,888 parameters.",
)

googlenet_paper = register_variant(
    GoogLeNetPaper,
    GOOGLENET_PAPER,
    "googlenet_paper",
    """GoogLeNet as the paper describes it: real 5x5 branch, LRN, no BN, dropout 0.4, two aux heads (weight 0.3).

    ``aux_logits=False`` drops the auxiliary classifiers; ``norm="bn"`` adds batch norm after every conv
    (convs then lose their bias); ``lrn=False`` removes the two LocalResponseNorm layers; ``aux_norm="bn"``
    gives the heads alone batch norm on every layer (the Inception-v3 paper's "BN-auxiliary").
    """,
    knobs=("num_classes", "in_chans", "aux_logits", "drop_rate", "norm", "width_mult", "branch5x5_kernel", "lrn",
           "aux_norm"),
    paper=PAPER,
    year=2014,
    input_size=224,
    min_input_size=MIN_INPUT_SIZE_PAPER_AUX,
    reference_params=None,
    reference_gmacs=1.5,
    reference_source="the paper: 'about 1.5 billion multiply-adds' (sec. 1); Table 1 sums to about 6.8M "
    "parameters without the aux heads (the paper gives no count with them)",
)
