"""A model you already have, evaluated as given: `bench run --model FILE.py:FACTORY --weights FILE`, or an entry

    [defenses.my_model]
    plugin = "pretrained"
    model = "examples/my_model.py:small_cnn"   # FILE.py:FACTORY, MODULE:FACTORY or robustbench:NAME
    weights = "my_model.pt"                     # a state_dict, loaded with weights_only=True
    stochastic = false                          # true: the forward pass is random (attacks need EOT)
    bpda = {}                                   # {"module.path" = "identity"}: straight-through backward

The loading, checks and declarations live in bench.user_model (bench.evaluate uses them without this plug-in)."""
from bench import ModelDefense, ModelParams, register_defense


@register_defense("pretrained")
class Pretrained(ModelDefense):
    """A ready-made model (factory + weights, or robustbench:NAME) evaluated without training."""

    Params = ModelParams
