"""Attack plug-ins: each module registers one or more attacks with @bench.register_attack."""
