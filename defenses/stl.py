"""Sparse Transformation Layer (003, Sun et al., CVPR 2019; SPEC §9): the input is projected onto a "quasi-natural"
image space by convolutional sparse coding: a Tikhonov low/high split, convolutional BPDN of the high-pass part
(64 atoms of 8×8×3, λ = 0.2), reconstruction = low-pass + D∗z. The classifier (VGG-16 in the paper) is trained on
STL outputs. The universal-dictionary variant ("STL"): the authors' published CIFAR-10 dictionaries by default
(external zoo cards, sha256-checked), no clustering.

The solve runs without a graph, as in the published defense: plain PGD gets no gradient through it (bench's
per-cell gradient check marks such a cell failed). backward = 'identity' is the BPDA surrogate (Athalye et al.):
the layer's forward values, the identity's gradient."""
from __future__ import annotations

import contextlib
from typing import ClassVar, Literal

import torch

from bench import (ConfigError, Defense, DefenseParams, Field, Number, BenchError, build_classifier, file_key,
                   locate_file, register_defense, set_on_modules)

from ._hah_layers import VGG
from ._stl import ConvBPDN, SparseTransformationLayer, STLNet, load_dictionary


class STLParams(DefenseParams):
    lmbda: Number = Field(0.2, gt=0, description="λ of the convolutional BPDN (003: 0.2; larger blurs more)")
    dictionary: str = Field("results/zoo/external/stl_dictionary_lm0.2_authors.json",
                            description="the dictionary: a .npy of shape (S, S, C, M) (relative to bench.toml) or an "
                                        "external zoo card of one, read from the weights root and sha256-checked")
    iterations: int = Field(50, ge=1, description="ADMM iterations (fixed; 50 reach the optimum's objective "
                                                  "within 0.5 %, docs/frontends.md)")
    rho: Number = Field(0.0, ge=0, description="ADMM penalty; 0 = sporco's default 50λ + 1")
    tikhonov_lmbda: Number = Field(5.0, gt=0, description="λ of the Tikhonov low/high split (the authors' code: 5)")
    pad: int = Field(16, ge=0, description="symmetric padding of the split (the authors' code: 16)")
    arch: Literal["vgg16", "resnet32"] = Field("vgg16", description="the classifier trained on STL outputs")
    width: Number = Field(1.0, gt=0, le=1, description="vgg16 channel multiplier (1 = 64..512 channels)")
    classifier_weights: str = Field("", description="'' = train the classifier on STL outputs; else a checkpoint of "
                                                    "a vanilla classifier of this arch (a zoo .pt or a state_dict, "
                                                    "relative to bench.toml): 003 Table 5's STL in front of an "
                                                    "unmodified model (set epochs = 0)")

    # added after the first STL checkpoints were keyed: out of the serialized recipe while unset (StrictModel)
    omit_at_default: ClassVar[dict] = {**DefenseParams.omit_at_default, "classifier_weights": ""}


@register_defense("stl")
class STL(Defense):
    """Sparse Transformation Layer: convolutional sparse coding of the high-pass image, classifier retrained on it."""

    Params = STLParams
    non_differentiable = ("convolutional sparse coding solve (no gradient; backward 'identity' = BPDA)",)
    surrogates = ("identity", "autograd")

    @classmethod
    def file_digests(cls, params, root) -> dict:
        """The dictionary file's sha256 keys the checkpoint (the classifier is trained on its outputs), and so does a
        vanilla classifier's checkpoint."""
        out = {"dictionary": file_key(params.dictionary, root)}
        if params.classifier_weights:
            out["classifier_weights"] = file_key(params.classifier_weights, root)
        return out

    def build_model(self) -> STLNet:
        p, (c, h, w) = self.params, self.info.shape
        path = locate_file(p.dictionary, self.context.config_root, self.context.weights_root)
        try:
            atoms = load_dictionary(path)
        except ValueError as e:
            raise BenchError(f"The STL dictionary cannot be used: {e}.") from None
        if atoms.shape[1] != c:
            raise ConfigError(f"The STL dictionary {p.dictionary} has {atoms.shape[1]}-channel atoms; "
                              f"{self.info.name} images have {c} channel(s).")
        stl = SparseTransformationLayer(ConvBPDN(atoms, h, w, p.lmbda, p.iterations, p.rho or None),
                                        p.tikhonov_lmbda, p.pad)
        classifier = VGG(self.info, width=p.width) if p.arch == "vgg16" else build_classifier(p.arch, self.info)
        if p.classifier_weights:
            weights = locate_file(p.classifier_weights, self.context.config_root, self.context.weights_root)
            self._load_classifier(classifier, weights)
        return STLNet(stl, classifier)

    def _load_classifier(self, classifier, path) -> None:
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("model", state) if isinstance(state, dict) else state
        try:
            classifier.load_state_dict(state)
        except (RuntimeError, TypeError, AttributeError) as e:
            first = str(e).strip().splitlines()[0]
            raise BenchError(f"classifier_weights {self.params.classifier_weights!r} does not fit the STL's "
                             f"{self.params.arch} (width {self.params.width}): {first}") from None

    @classmethod
    def surrogate_problem(cls, params, spec):
        if spec in (None, "", "autograd", "identity", "bpda"):
            return ""
        return (f"Defense 'stl' has no backward surrogate {spec!r}. Allowed: 'identity' (BPDA: the identity's "
                f"gradient through the sparse-coding layer; 'bpda' names it too) or 'autograd' (none: the layer "
                f"passes no gradient)")

    @contextlib.contextmanager
    def surrogate(self, model, spec):
        self.require_surrogate(spec)
        mode = "identity" if spec in ("identity", "bpda") else "autograd"
        with set_on_modules(model, SparseTransformationLayer, "backward", mode, "sparse transformation layer") as m:
            yield m
