"""Sparse-coding front end (000 §3, 001 §4.2; SPEC §1-2): a frozen patch dictionary as a conv layer, top-T
coefficients per location, optional test-time dropout, a quantizing activation that no eps-bounded Linf
perturbation can flip (beta > 1), and a transposed-conv decoder, in front of a ResNet-32 trained jointly with the
decoder on clean images.

`sparse` is the non-random defense of 000 (T = 15); `sparse_dropout` the randomized one of 001 §4.2 (T = 50,
p = 0.95, softmax ensemble of E = 10 passes at evaluation). The dictionary is a content-addressed artifact
(`results/cache/dictionary/<key>.pt`, keyed by the dictionary settings + dataset + artifact_seed), learned on first
use. Attacks pick gradient surrogates by name through `surrogate()` (BPDA, SPEC §2)."""
from __future__ import annotations

import contextlib
from typing import ClassVar, Literal

from pydantic import model_validator

from bench import (BenchError, Defense, DefenseParams, Field, Number, build_classifier, file_key, locate_file,
                   register_defense)

from . import _dictionary
from ._sparse_frontend import (Decoder, SoftmaxEnsemble, SparseCodingNet, SparseEncoder, backward_mode,
                               parse_backward)


class FrontendParams(DefenseParams):
    """Dictionary and coefficient selection, shared by every sparse-coding defense."""

    n_atoms: int = Field(500, gt=0, description="dictionary atoms L")
    patch_size: int = Field(4, gt=0, description="square patch side (pixels)")
    stride: int = Field(2, gt=0, description="patch stride")
    dict_alpha: Number = Field(1.0, gt=0, description="L1 penalty (lambda) of the dictionary learning")
    dict_batch_size: int = Field(5, gt=0, description="patches per mini-batch of the dictionary learning")
    dict_iterations: int = Field(1000, gt=0, description="dictionary-learning mini-batches (partial_fit calls)")
    dict_learner: Literal["sklearn"] = Field("sklearn", description="dictionary learner (scikit-learn reference)")
    dictionary: str = Field("", description="'' = learn it (the dict_* settings); else a .npy of the atoms as rows "
                                           "(n_atoms × patch·patch·channels, flattened H, W, C), relative to "
                                           "bench.toml, or an external zoo card (results/zoo/external/NAME.json) of "
                                           "one, read from the weights root and sha256-checked")
    artifact_seed: int = Field(0, ge=0, description="seed of the cached dictionary (and autoencoder): one per "
                                                   "setting, shared by every run seed, as the authors' single file")
    top_t: int = Field(15, gt=0, description="coefficients kept per location (T)")
    decoder_widths: list[int] = Field([300, 100], min_length=2, max_length=2,
                                      description="channels of the decoder's first two transposed convs (paper: 300, 100)")
    epochs: int = Field(70, ge=0)
    batch_size: int = Field(64, gt=0)
    lr: Number = Field(0.02, gt=0, description="peak LR of the cyclic schedule (000 A.3: 0.02 for T >= 5, 0.05 for T = 1, 2)")

    # added after checkpoints were keyed: a learned dictionary keeps every earlier key
    omit_at_default: ClassVar[dict] = {**DefenseParams.omit_at_default, "dictionary": ""}

    @model_validator(mode="after")
    def _sizes(self):
        if self.top_t > self.n_atoms:
            raise ValueError(f"top_t = {self.top_t} exceeds n_atoms = {self.n_atoms}")
        if min(self.decoder_widths) < 1:
            raise ValueError(f"decoder_widths {self.decoder_widths} must be positive")
        return self


class SparseParams(FrontendParams):
    beta: Number = Field(3.0, gt=0, description="activation threshold beta·eps·||d_l||_1 (beta > 1: survivors "
                                                "cannot be sign-flipped within eps)")
    defense_eps: Number = Field(8 / 255, gt=0, description="the Linf budget the thresholds are designed for")


class SparseFrontendDefense(Defense):
    """Base of the sparse-coding defenses: builds encoder + decoder + classifier and serves the surrogates."""

    non_differentiable = ("top_T", "quantizer")
    surrogates = ("smooth:4+top_u:2T", "smooth:4", "identity", "top_u:2T", "frontend_identity", "autograd")
    quantize = True

    @property
    def dropout_p(self) -> float:
        return getattr(self.params, "dropout_p", 0.0)

    def dictionary_settings(self) -> _dictionary.DictionarySettings:
        p = self.params
        return _dictionary.DictionarySettings(
            dataset=self.info.name, n_atoms=p.n_atoms, patch_size=p.patch_size, stride=p.stride, alpha=p.dict_alpha,
            batch_size=p.dict_batch_size, iterations=p.dict_iterations, learner=p.dict_learner, seed=p.artifact_seed)

    @classmethod
    def file_digests(cls, params, root) -> dict:
        """A dictionary read from a file is that file's sha256 in the checkpoint key (a learned one is its settings,
        already in the params)."""
        return {"dictionary": file_key(params.dictionary, root)} if params.dictionary else {}

    def dictionary_key(self) -> str:
        """What identifies the dictionary in artifacts built on it (the autoencoder of sparse_ae)."""
        p = self.params
        if p.dictionary:
            return "file:" + file_key(p.dictionary, self.context.config_root)
        return self.dictionary_settings().key

    def build_model(self) -> SparseCodingNet:
        p = self.params
        if p.dictionary:  # a published dictionary: no learning, the file's sha256 checked when it is an external card
            path = locate_file(p.dictionary, self.context.config_root, self.context.weights_root)
            filters, self.dictionary_meta = _dictionary.from_file(path, self.dictionary_settings(), self.info.shape[0],
                                                                  self.dictionary_key())
        else:
            # the run's cache and data root (bench.runner sets the context); without a cache it is learned in memory
            filters, self.dictionary_meta = _dictionary.obtain(self.dictionary_settings(), self.context.cache,
                                                               self.context.data_root)
        beta, eps = (p.beta, p.defense_eps) if self.quantize else (0.0, 0.0)
        encoder = SparseEncoder(filters, p.stride, p.top_t, beta, eps, self.dropout_p, self.quantize)
        decoder = Decoder(p.n_atoms, self.info.shape[0], p.patch_size, p.stride, tuple(p.decoder_widths))
        return SparseCodingNet(encoder, decoder, build_classifier(self.arch, self.info))

    @classmethod
    def surrogate_problem(cls, params, spec):
        try:
            parse_backward(spec, params.top_t, params.n_atoms, cls.quantize)
        except BenchError as e:
            return str(e)
        return ""

    @contextlib.contextmanager
    def surrogate(self, model, spec):
        mode = parse_backward(spec, self.params.top_t, self.params.n_atoms, self.quantize)
        with backward_mode(model, mode) as m:
            yield m

    def evaluation_model(self, model):
        passes = getattr(self.params, "ensemble", 1)
        return SoftmaxEnsemble(model, passes) if self.stochastic and passes > 1 else model

    def training_flags(self, history: list[dict]) -> dict:
        meta = getattr(self, "dictionary_meta", None) or {}
        stats = meta.get("stats", {})
        return {"dictionary": meta.get("key", ""), "dict_mean_l1": round(stats.get("mean_l1", float("nan")), 4)}


@register_defense("sparse")
class Sparse(SparseFrontendDefense):
    """Sparse-coding front end (dictionary, top-T, quantizing activation, decoder) + ResNet-32; T = 15."""

    Params = SparseParams


@register_defense("sparse_dropout")
class SparseDropout(SparseFrontendDefense):
    """Randomized sparse-coding front end: top-T then dropout at train and test time, softmax ensemble of E passes."""

    stochastic = True

    class Params(SparseParams):
        top_t: int = Field(50, gt=0, description="coefficients kept per location (T)")
        dropout_p: Number = Field(0.95, ge=0, lt=1, description="drop probability of each top-T survivor (train and test, no rescale)")
        ensemble: int = Field(10, ge=1, description="stochastic passes whose softmax is averaged at evaluation (E)")
        lr: Number = Field(0.05, gt=0, description="peak LR of the cyclic schedule (001 §4.2: 0.05)")
