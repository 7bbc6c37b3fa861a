"""Common corruptions (CIFAR-10-C, Hendrycks & Dietterich 2019): not attacks, natural shifts. One plug-in per
corruption and severity, `corrupt_<corruption>_<severity>` (95 of them, made by the loop at the end from one class),
so each is a cell with its own row: accuracy on the corrupted test images, every test point judged (clean errors
included, as CIFAR-10-C accuracy is defined). The images come from the released files when the corruptions root
holds them, else are regenerated with a fixed seed per (corruption, severity, test image) (bench.corruptions), and
are cached content-addressed per batch. 001 Table 5.2 and the leaderboards' corruptions table read these rows."""
from __future__ import annotations

import numpy as np
import torch

from bench import Attack, AttackOutput, AttackParams, content_hash, corruptions, register_attack

CACHE_KIND = "corruptions"


class Corruption(Attack):
    """Accuracy on CIFAR-10-C images of one corruption at one severity (not an attack: every test point is scored)."""

    kind = "bounded"  # no norm: no budget to check; robust_acc = accuracy on the corrupted images
    every_point = True
    corruption = ""
    severity = 0

    class Params(AttackParams):
        pass

    @classmethod
    def inputs(cls, params, dataset, roots):
        return corruptions.source_inputs(cls.corruption, dataset, roots["corruptions"])

    def run(self, model, x, y, ctx):
        index = ctx.test_positions().numpy()
        images = self._images(x, y, index, ctx)
        x_c = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255).to(x.device)
        # no verdict of its own: the harness predicts every returned image once (in fp32, with the model whose
        # decision counts), so a forward pass here would only double the cost
        return AttackOutput(x_adv=x_c, fooled=torch.zeros(len(x), dtype=torch.bool, device=x.device))

    def _images(self, x, y, index, ctx) -> np.ndarray:
        root = ctx.roots["corruptions"]
        inputs = corruptions.source_inputs(self.corruption, ctx.dataset, root)
        ctx.info.update({"corruption": self.corruption, "severity": self.severity, "source": inputs["source"],
                         "inputs": inputs})
        if "sha256" in inputs:  # the released files, read as stored
            return corruptions.read_released(root, self.corruption, self.severity, index, labels=y.cpu().numpy())
        cache = ctx.artifact_cache()
        key = content_hash({"corruption": self.corruption, "severity": self.severity, "inputs": inputs,
                            "index": index.tolist()})
        if cache.has(CACHE_KIND, key):
            payload, _ = cache.load(CACHE_KIND, key)
            return payload["images"].numpy()
        # the cell's images are its test images as uint8 (exact: load_subset divided the stored bytes by 255)
        clean = (x.detach().cpu().permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()
        images = corruptions.regenerate(self.corruption, self.severity, clean, index, root)
        cache.save(CACHE_KIND, key, {"images": torch.from_numpy(images)},
                   {"corruption": self.corruption, "severity": self.severity, "images": len(index),
                    "first_index": int(index[0]) if len(index) else None, **inputs})
        return images


def _plugin(corruption: str, severity: int) -> type:
    doc = (f"CIFAR-10-C {corruption.replace('_', ' ')}, severity {severity}: accuracy on the corrupted test images "
           f"(not an attack; released files if present, else regenerated)")
    return type(f"Corrupt_{corruption}_{severity}", (Corruption,),
                {"corruption": corruption, "severity": severity, "__doc__": doc, "__module__": __name__})


for _name in corruptions.spec.CORRUPTIONS:
    for _severity in corruptions.spec.SEVERITIES:
        register_attack(corruptions.spec.attack_name(_name, _severity))(_plugin(_name, _severity))
