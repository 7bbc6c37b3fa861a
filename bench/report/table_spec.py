"""[tables.NAME] in bench.toml: a paper's table layout as data, with the published numbers beside each row.

A cell reference is "clean", "worst" (per-sample worst case over `worst_of`), the name of an [attacks.*] entry,
"success:NAME" (that attack's success rate on the points it attacked, as the papers' query-attack tables give it),
"pending:NAME" for an entry that bench.toml does not have yet (rendered as "pending", never as a number), or a
common corruption (CIFAR-10-C, bench.report.corruption_board): "corruption:NAME" (its five severities pooled),
"corruption:NAME@S" (severity S only), "corruption:mean" (pooled over the row's other corruption cells).
A row names its [defenses.*] entry, `pending` when that entry does not exist yet, or `not_run` (the reason) for a
published row bench does not measure (another paper's model). Every name that is not
marked pending must exist: a typo is an error at load, like everywhere else in bench.toml."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ..errors import ConfigError, did_you_mean
from ..params import StrictModel

PENDING = "pending:"
SUCCESS = "success:"
CORRUPTION = "corruption:"
SPECIAL_CELLS = ("clean", "worst")


class TableColumn(StrictModel):
    label: str
    cell: str = Field(description="clean | worst | an [attacks.*] entry | success:NAME | pending:NAME | "
                                  "corruption:NAME[@S] | corruption:mean")
    dataset: str | None = Field(None, description="default: the table's dataset")


class TableRow(StrictModel):
    label: str
    defense: str | None = Field(None, description="the [defenses.*] entry measured in this row")
    pending: str = Field("", description="the entry this row waits for when `defense` is not set")
    not_run: str = Field("", description="why bench does not measure this row (another paper's model, a training "
                                         "not done here): its published numbers are shown beside 'not run'")
    cells: list[str] | None = Field(None, description="per-row cell references (replace the columns' `cell`)")
    worst_of: list[str] | None = Field(None, description="attacks whose per-sample worst case fills 'worst' cells")
    paper: list[float | Literal["-"]] = Field(default_factory=list, description="published numbers, '-' = not reported")
    note: str = ""

    @model_validator(mode="after")
    def _defense_or_pending(self):
        if [self.defense is not None, bool(self.pending), bool(self.not_run)].count(True) != 1:
            raise ValueError(f"row '{self.label}' needs exactly one of `defense` (an entry), `pending` (the entry "
                             f"it waits for) or `not_run` (why bench does not measure it)")
        return self


class TableSpec(StrictModel):
    title: str
    source: str = Field(description="where the published numbers come from")
    dataset: str
    columns: list[TableColumn] = Field(min_length=1)
    rows: list[TableRow] = Field(min_length=1)
    worst_of: list[str] | None = None
    note: str = ""
    profiles: list[str] | None = Field(None, description="the profiles `bench table --paper` renders it for "
                                                         "(default: every profile)")

    def renders_for(self, profile: str) -> bool:
        return self.profiles is None or profile in self.profiles

    def row_cells(self, row: TableRow) -> list[str]:
        return row.cells if row.cells is not None else [c.cell for c in self.columns]

    def worst_attacks(self, row: TableRow) -> list[str]:
        """'worst' = the row's `worst_of`, else the table's, else every attack the row shows."""
        if row.worst_of is not None:
            return row.worst_of
        if self.worst_of is not None:
            return self.worst_of
        return [c for c in self.row_cells(row) if c not in SPECIAL_CELLS
                and not c.startswith((PENDING, SUCCESS, CORRUPTION))]

    def column_dataset(self, i: int) -> str:
        return self.columns[i].dataset or self.dataset


def check_table(cfg, name: str, spec: TableSpec) -> None:
    """Names in a table spec must exist in bench.toml unless marked pending (called by load_config)."""
    where = f"tables.{name}"
    for ds in {spec.dataset, *(c.dataset for c in spec.columns if c.dataset)}:
        cfg.check_choice(f"dataset in {where}", ds, cfg.datasets)
    for prof in spec.profiles or []:
        cfg.check_choice(f"profile in {where}", prof, cfg.profiles)
    for row in spec.rows:
        at = f"{where}, row '{row.label}'"
        if row.defense is not None:
            _check_entry(cfg, "defense", row.defense, at)
        cells = spec.row_cells(row)
        if len(cells) != len(spec.columns):
            raise ConfigError(f"Invalid config: {at}: `cells` has {len(cells)} entries, the table has "
                              f"{len(spec.columns)} columns.")
        if row.paper and len(row.paper) != len(spec.columns):
            raise ConfigError(f"Invalid config: {at}: `paper` has {len(row.paper)} numbers, the table has "
                              f"{len(spec.columns)} columns (write \"-\" where the paper reports none).")
        for ref in [*cells, *(row.worst_of or []), *(spec.worst_of or [])]:
            if ref.startswith(PENDING):
                if not ref[len(PENDING):]:
                    raise ConfigError(f"Invalid config: {at}: 'pending:' must name the entry it waits for.")
            elif ref.startswith(CORRUPTION):
                problem = corruption_ref_problem(ref)
                if problem:
                    raise ConfigError(f"Invalid config: {at}: cell '{ref}': {problem}")
            elif ref not in SPECIAL_CELLS:
                _check_entry(cfg, "attack", ref.removeprefix(SUCCESS), at)
        if "worst" in cells and row.defense is not None and not spec.worst_attacks(row):
            raise ConfigError(f"Invalid config: {at} has a 'worst' cell but no attacks to take it over; "
                              f"set `worst_of` on the row or the table.")


def _check_entry(cfg, kind: str, name: str, at: str) -> None:
    if not cfg.has(kind, name):
        table = "defenses" if kind == "defense" else "attacks"
        raise ConfigError(f"Invalid config: {at} names unknown {kind} '{name}' (no [{table}.{name}] entry). "
                          f"{did_you_mean(name, cfg.names(kind))} Write 'pending:{name}' "
                          f"(or `pending = \"{name}\"` for a row) if the entry is still being written.")


def corruption_ref(ref: str) -> tuple[str, tuple[int, ...]]:
    """'corruption:fog' -> ('fog', (1, 2, 3, 4, 5)); 'corruption:fog@5' -> ('fog', (5,)); 'corruption:mean' ->
    ('mean', (1, ..., 5))."""
    from ..corruptions.spec import SEVERITIES

    name, _, sev = ref[len(CORRUPTION):].partition("@")
    return name, (int(sev),) if sev else tuple(SEVERITIES)


def corruption_ref_problem(ref: str) -> str:
    from ..corruptions.spec import CORRUPTIONS, SEVERITIES

    name, _, sev = ref[len(CORRUPTION):].partition("@")
    if name != "mean" and name not in CORRUPTIONS:
        return f"no corruption '{name}'. {did_you_mean(name, [*CORRUPTIONS, 'mean'])}"
    if name == "mean" and sev:
        return "corruption:mean pools the row's other corruption cells as they are written; it takes no @S."
    if sev and (not sev.isdigit() or int(sev) not in SEVERITIES):
        return f"severity '{sev}' does not exist. Allowed: {', '.join(map(str, SEVERITIES))}."
    return ""
