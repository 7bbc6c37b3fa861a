"""Unsupervised sparse autoencoder + classifier (001 §4.2, SPEC §1): the surrogate the PW-T attack generates its
examples on. Same dictionary as `sparse`, top-T (T = 50) then dropout (p = 0.95) at train and test time, NO
quantization; the decoder is trained alone to reconstruct the image (MSE, `ae_epochs`, cyclic `ae_lr`), frozen,
and then a ResNet-32 is trained on its outputs (`epochs`, cyclic `lr`).

Two phases, each with its own cyclic schedule as in the paper: the autoencoder is a content-addressed artifact
(`results/cache/autoencoder/<key>.pt`) trained through the shared loop `bench.training.fit` when the classifier's
training starts (epoch 0) and reused by every later run; the checkpoint of this defense then holds encoder,
decoder and classifier. Attacks use surrogate 'frontend_identity' (the autoencoder is the identity in the
backward pass, PW-T) or 'top_u:2T'."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench import (Defense, Field, Number, TrainParams, content_hash, fit, load_split, progress, register_defense,
                   resolve_data_root, subset_indices)

from .sparse import FrontendParams, SparseFrontendDefense

FORMAT = 1  # bump when a change here invalidates cached autoencoders


class _Reconstruction(nn.Module):
    """The front end alone, image in, image out."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net.frontend(x)


class _ReconstructionTraining(Defense):
    """The autoencoder phase for `bench.training.fit`: MSE between reconstruction and input."""

    name = "sparse_ae/autoencoder"

    def batch_loss(self, model, x, y):
        # fit logs accuracy from the second value; labels are -1 here, so that column reads 0 (not meaningful)
        return F.mse_loss(model(x), x), torch.zeros(len(x), 1, device=x.device)


@register_defense("sparse_ae")
class SparseAutoencoder(SparseFrontendDefense):
    """Unsupervised sparse autoencoder (T = 50, dropout 0.95, no quantization, MSE) + ResNet-32: PW-T's surrogate."""

    stochastic = True
    quantize = False
    non_differentiable = ("top_T",)
    surrogates = ("frontend_identity", "top_u:2T", "autograd")

    class Params(FrontendParams):
        top_t: int = Field(50, gt=0, description="coefficients kept per location (T)")
        dropout_p: Number = Field(0.95, ge=0, lt=1, description="drop probability of each top-T survivor (train and test, no rescale)")
        ensemble: int = Field(10, ge=1, description="stochastic passes whose softmax is averaged at evaluation (E)")
        ae_epochs: int = Field(50, ge=1, description="epochs of the decoder's MSE training (phase 1)")
        ae_lr: Number = Field(0.05, gt=0, description="peak cyclic LR of phase 1")
        ae_batch_size: int = Field(64, gt=0, description="batch size of phase 1")
        epochs: int = Field(70, ge=0, description="epochs of the classifier on the frozen autoencoder (phase 2)")
        lr: Number = Field(0.05, gt=0, description="peak cyclic LR of phase 2")

    def build_model(self):
        model = super().build_model()
        model.decoder.requires_grad_(False)  # phase 2 trains the classifier only
        return model

    def autoencoder_key(self) -> str:
        p = self.params
        recipe = {k: v for k, v in p.model_dump(mode="json").items()
                  if k in ("top_t", "dropout_p", "ae_epochs", "ae_lr", "ae_batch_size", "n_train", "momentum",
                           "weight_decay", "augment", "artifact_seed")}
        return content_hash({"kind": "autoencoder", "dictionary": self.dictionary_key(), **recipe,
                             "format": FORMAT})

    def start_epoch(self, model, epoch: int) -> None:
        super().start_epoch(model, epoch)
        if epoch == 0:  # a fresh classifier training: install the phase-1 autoencoder first
            self.autoencoder_meta = self._install_autoencoder(model)
            model.train()

    def _install_autoencoder(self, model) -> dict:
        cache, key = self.context.cache, self.autoencoder_key()
        if cache is not None and cache.has("autoencoder", key):
            payload, meta = cache.load("autoencoder", key)
            model.decoder.load_state_dict(payload["decoder"])
            progress.log(f"[sparse_ae] using cached autoencoder {key}")
            return meta
        p = self.params
        x_train = self._training_images()
        recipe = {k: getattr(p, k) for k in TrainParams.model_fields}
        recipe.update(epochs=p.ae_epochs, lr=p.ae_lr, batch_size=p.ae_batch_size, schedule="cyclic", monitor_n=0)
        trainer = _ReconstructionTraining(TrainParams(**recipe), self.info)
        device = next(model.classifier.parameters()).device
        empty = (torch.empty(0, *x_train.shape[1:]), torch.empty(0, dtype=torch.long))
        progress.log(f"[sparse_ae] phase 1: training the autoencoder {key} on {len(x_train)} images for "
                     f"{p.ae_epochs} epochs")
        rng = torch.get_rng_state()  # the classifier's phase must not depend on whether this ran
        model.decoder.requires_grad_(True)
        try:
            history = fit(trainer, _Reconstruction(model), x_train, torch.full((len(x_train),), -1), empty, device,
                          p.artifact_seed,
                          state_path=cache.path("autoencoder", key, ".partial.pt") if cache is not None else None)
        finally:
            model.decoder.requires_grad_(False)
            torch.set_rng_state(rng)
        meta = {"key": key, "dictionary": self.dictionary_key(), "recipe": recipe, "history": history,
                "final_mse": history[-1]["loss"] if history else None}
        if cache is not None:
            cache.save("autoencoder", key, {"decoder": model.decoder.state_dict()}, meta)
            cache.path("autoencoder", key, ".partial.pt").unlink(missing_ok=True)
        return meta

    def _training_images(self) -> torch.Tensor:
        root = self.context.data_root or resolve_data_root()
        x, _ = load_split(self.info.name, "train", str(root))
        return x[subset_indices(len(x), self.params.n_train, self.params.artifact_seed, f"{self.info.name}/train")]

    def training_flags(self, history):
        flags = {**super().training_flags(history), "autoencoder": self.autoencoder_key()}
        meta = getattr(self, "autoencoder_meta", None)  # absent when this training resumed after phase 1
        if meta and meta.get("final_mse") is not None:
            flags["ae_final_mse"] = round(meta["final_mse"], 6)
        return flags

