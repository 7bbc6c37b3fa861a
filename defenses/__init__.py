"""Defense plug-ins: each module registers one or more defenses with @bench.register_defense."""
