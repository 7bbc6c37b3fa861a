"""Sparsifying front end (002, Gopalakrishnan et al.; SPEC §8): keep the K largest-magnitude coefficients of each
image in an orthonormal wavelet basis (PyWavelets), invert, and classify with a network retrained on sparsified
images. MNIST: coif1, ρ = 3.5 % (K = 27), the paper's 4-layer CNN; CIFAR-10: sym9 per YCbCr channel, ρ = (3.5, 1,
1) %, ResNet-32. ρ = 1 keeps every coefficient: the same classifier with no defense (exact reconstruction).

Attacks pick the paper's three gradient modes by name through `surrogate()`: 'projection' (= autograd), 'identity'
(BPDA of 1) and 'iterated:M' (iterated projections)."""
from __future__ import annotations

import contextlib
from typing import Literal

from pydantic import field_validator, model_validator

from bench import (BenchError, ConfigError, Defense, DefenseParams, Field, Number, build_classifier, register_defense,
                   set_on_modules)

from ._wavelet import (WaveletNet, WaveletSparsifier, analysis_matrix, nielsen_classifier, orthogonal_wavelets,
                       parse_backward, sparsity_levels)


class WaveletParams(DefenseParams):
    wavelet: str = Field("coif1", description="PyWavelets orthogonal wavelet (002: db5 for the SVM, coif1 for the "
                                              "MNIST CNN, sym9 for CIFAR-10)")
    level: int = Field(1, ge=1, description="decomposition levels of the periodized 2-D DWT (002 code: 1)")
    rho: list[Number] = Field([0.035], min_length=1, max_length=3,
                              description="sparsity ρ = K/N, one value or one per channel (K = floor(ρ·N))")
    color: Literal["ycbcr", "rgb"] = Field("ycbcr", description="colour images: sparsify Y, Cb, Cr (002) or R, G, B")
    iterate_eps: Number = Field(0.2, gt=0, description="step of the candidate at which 'iterated:M' re-estimates "
                                                      "the support (the attack budget)")
    dropout: Number = Field(0.5, ge=0, lt=1, description="dropout of the nielsen_cnn's FC layers")

    @field_validator("wavelet")
    @classmethod
    def _orthogonal(cls, v):
        allowed = orthogonal_wavelets()
        if v not in allowed:
            raise ValueError(f"wavelet {v!r} is not an orthogonal PyWavelets wavelet; allowed: db1-db38, sym2-sym20, "
                             f"coif1-coif17, haar, dmey")
        return v

    @field_validator("rho")
    @classmethod
    def _fraction(cls, v):
        if any(not 0 < r <= 1 for r in v):
            raise ValueError(f"rho {v}: each value must lie in (0, 1]")
        return v

    @model_validator(mode="after")
    def _arch(self):
        if self.arch not in ("auto", "nielsen_cnn", "resnet32", "madry_cnn"):
            raise ValueError(f"arch {self.arch!r}: allowed 'auto', 'nielsen_cnn', 'resnet32', 'madry_cnn'")
        return self


@register_defense("wavelet")
class Wavelet(Defense):
    """Sparsifying front end: top-K coefficients in an orthonormal wavelet basis, classifier retrained on its output."""

    Params = WaveletParams
    # the top-K selection is piecewise linear: autograd is the exact gradient on the input's support (no masking),
    # the paper's other two modes are surrogates an adaptive attack may prefer
    surrogates = ("projection", "identity", "iterated:M")
    audit_surrogates = ("identity", "iterated:20")

    def build_model(self) -> WaveletNet:
        p, (c, h, w) = self.params, self.info.shape
        if len(p.rho) not in (1, c):
            raise ConfigError(f"rho {p.rho} has {len(p.rho)} values; {self.info.name} images have {c} channel(s): "
                              f"give one value or {c}.")
        front = WaveletSparsifier(analysis_matrix(p.wavelet, h, w, p.level), sparsity_levels(p.rho, c, h * w),
                                  ycbcr=(c == 3 and p.color == "ycbcr"), iterate_eps=p.iterate_eps)
        if self.arch == "nielsen_cnn":
            classifier = nielsen_classifier(self.info, p.dropout)
        else:
            classifier = build_classifier(self.arch, self.info)
        return WaveletNet(front, classifier)

    @classmethod
    def surrogate_problem(cls, params, spec):
        try:
            parse_backward(spec)
        except BenchError as e:
            return str(e)
        return ""

    @contextlib.contextmanager
    def surrogate(self, model, spec):
        with set_on_modules(model, WaveletSparsifier, "backward", parse_backward(spec), "wavelet front end") as m:
            yield m

    def training_flags(self, history):
        p, (c, h, w) = self.params, self.info.shape
        return {"k_per_channel": sparsity_levels(p.rho, c, h * w)}
