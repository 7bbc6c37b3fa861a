"""Natural (standard) training: cross-entropy on clean images."""
from bench import Defense, register_defense


@register_defense("natural")
class Natural(Defense):
    """Standard training on clean images (no defense); the papers' reference row."""
