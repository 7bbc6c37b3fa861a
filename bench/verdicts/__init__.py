"""Verdicts: is a robustness number a robustness number? Every check bench runs on an evaluation, in one package.

    settings      [verdicts] and [verdicts.audit] of bench.toml: every threshold, validated at load
    cell          the per-cell checks, measured inside every cell at almost no cost (Probe -> finalize): gradient
                  health (zero/NaN/vanishing), randomness, output form, shattered gradients, incomplete
                  optimisation, silent success
    rules         the rules shared by the kinds below, each written once (black_box_stronger)
    cross_cell    checks across the cells of one defense at one threat model, from their per-sample verdicts
    suite_checks  checks on a threat-model suite's own stages
    audit_checks  the checks of `bench audit` from the paired outcomes of its attacks (bench/audit.py runs them)
    audit_reports audit reports on disk: written by the audit, read by the leaderboards

docs/verdicts.md describes every check, its threshold and what it found on planted and honest models."""
from __future__ import annotations

from .audit_checks import audit_checks
from .audit_reports import load_reports, read_report, report_path, write as write_report
from .cell import (Probe, _check, attack_loss_kind, dead_gradients, finalize, from_column, merge_probes, to_column,
                   warnings_of, worst)
from .rules import black_box_stronger, paired_excess
from .settings import AuditSettings, VerdictSettings
from .suite_checks import suite_black_box

__all__ = ["AuditSettings", "Probe", "VerdictSettings", "attack_loss_kind", "audit_checks", "black_box_stronger",
           "dead_gradients", "finalize", "from_column", "load_reports", "merge_probes", "paired_excess",
           "read_report", "report_path", "suite_black_box", "to_column", "warnings_of", "worst", "write_report"]
