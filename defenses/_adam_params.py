"""Parameters shared by the defenses that build their own network and train, as their papers do, with Adam
(lr 1e-3, no weight decay) and a step schedule: the defaults make a bare `plugin = "..."` entry (an ablation,
say) train with the paper's recipe unless bench.toml says otherwise."""
from __future__ import annotations

from typing import Literal

from pydantic import field_validator

from bench import DefenseParams, Field, Number


class AdamOwnNetParams(DefenseParams):
    optimizer: Literal["sgd", "adam"] = "adam"
    lr: Number = Field(1e-3, gt=0)
    weight_decay: Number = Field(0.0, ge=0)
    schedule: Literal["cyclic", "multistep", "constant"] = "multistep"

    @field_validator("arch")
    @classmethod
    def _arch_unset(cls, v):
        if v != "auto":
            raise ValueError("this defense builds its own network; leave 'arch' unset (see its other parameters)")
        return v
