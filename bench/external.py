"""External zoo entries: published checkpoints that the repository references but does not carry (third-party files,
licenses that forbid redistribution, sizes past the zoo's limit).

Each is a card, `<zoo_dir>/external/NAME.json`, with the file's name, sha256, where to fetch it (URL, repository @
commit : path), its license, the paper tables it belongs to and their published numbers. A ready-made model names the
card as its weights (`weights = "results/zoo/external/NAME.json"` in a `pretrained` entry, or `bench run --model ...
--weights CARD`); the file itself is read from the local **weights root**: `--weights-root`, else `BENCH_WEIGHTS`,
else `settings.weights_root` of bench.toml, else ./weights. Its sha256 must equal the card's: a missing file is one
paragraph naming the URL and the sha256 to expect, a different file is refused. The card's sha256 is what the
model's keys hold, so a cell's key is known (and a finished cell skipped) without reading the file."""
from __future__ import annotations

import json
import os
from pathlib import Path

from pydantic import Field, ValidationError

from .errors import BenchError
from .params import StrictModel
from .store import sha256_file

EXTERNAL_DIR = "external"  # under the zoo folder
CARD_SUFFIX = ".json"


class ExternalCard(StrictModel):
    """What a reader needs to trust and fetch a checkpoint that is not in the repository."""

    file: str = Field(description="the file's name in the weights root")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    url: str = Field(description="where to download it")
    source: str = Field(description="repository @ commit : path")
    license: str
    description: str
    dataset: str
    model: str = Field("", description="the factory that builds its architecture (FILE.py:FACTORY); '' for a file "
                                       "that is not a model (a dictionary)")
    entries: list[str] = Field(default_factory=list, description="bench.toml defense entries that evaluate it")
    tables: list[str] = Field(default_factory=list, description="the papers' tables it is behind")
    published: dict[str, float] = Field(default_factory=dict, description="published numbers, by table and column")
    expected_clean: str = Field("", description="the clean accuracy it must give, and on which points")


def resolve_weights_root(flag: str | os.PathLike | None = None, config_value: str | os.PathLike | None = None) -> Path:
    """--weights-root, then BENCH_WEIGHTS, then settings.weights_root (already made absolute), then ./weights."""
    for value in (flag, os.environ.get("BENCH_WEIGHTS"), config_value):
        if value:
            return Path(os.path.expanduser(str(value))).resolve()
    return Path("weights").resolve()


def is_card(path: str | os.PathLike) -> bool:
    """A weights value naming an external zoo card rather than a state_dict file."""
    p = Path(str(path))
    return p.suffix == CARD_SUFFIX and p.parent.name == EXTERNAL_DIR


def read_card(path: Path) -> ExternalCard:
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BenchError(f"The external zoo card {path} does not exist. Cards live in <zoo_dir>/{EXTERNAL_DIR}/ "
                         f"(`bench zoo list` shows them).") from None
    except (OSError, ValueError) as e:
        raise BenchError(f"The external zoo card {path} cannot be read ({e}). Restore it with `git checkout -- "
                         f"{path}`.") from None
    try:
        return ExternalCard.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(card)"
        raise BenchError(f"The external zoo card {path} is not valid: {where}: {first['msg']}. Restore it with "
                         f"`git checkout -- {path}`.") from None


def cards(zoo_dir: Path) -> list[tuple[str, ExternalCard]]:
    """(name, card) of every external entry, by name."""
    return [(p.stem, read_card(p)) for p in sorted((Path(zoo_dir) / EXTERNAL_DIR).glob(f"*{CARD_SUFFIX}"))]


def _fetch_hint(card: ExternalCard, root: Path) -> str:
    return (f"Fetch it from {card.url} ({card.source}; license: {card.license}) into {root}, check that its sha256 "
            f"is {card.sha256}, or point the weights root at a folder that holds it (--weights-root PATH or "
            f"export BENCH_WEIGHTS=PATH; settings.weights_root in bench.toml).")


def locate(card_path: Path, weights_root: Path) -> tuple[ExternalCard, Path]:
    """The card and its file in the weights root, sha256 verified: BenchError for a missing or different file."""
    card = read_card(card_path)
    path = Path(weights_root) / card.file
    if not path.is_file():
        raise BenchError(f"The checkpoint {card.file} of the external zoo entry {Path(card_path).stem} is not in "
                         f"the weights root {weights_root}. {_fetch_hint(card, Path(weights_root))}")
    got = sha256_file(path)
    if got != card.sha256:
        raise BenchError(f"Refusing {path}: its sha256 is {got}, the external zoo card {card_path} expects "
                         f"{card.sha256}. It is another file or a damaged copy: nothing was evaluated. "
                         f"{_fetch_hint(card, path.parent)}")
    return card, path


def locate_file(value: str, config_root: Path | None, weights_root: Path | None = None) -> Path:
    """A file a plug-in or a ready-made model reads, named in bench.toml: `value` itself (relative to bench.toml's
    folder), or, for an external zoo card, the file it names in the weights root, sha256 verified. A missing plain
    file is a BenchError naming it."""
    path = _from_config(value, config_root)
    if is_card(value):
        return locate(path, weights_root or resolve_weights_root())[1]
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise BenchError(f"The file {path} (from {value!r} in bench.toml) {what}.")
    return path


def file_key(value: str, config_root: Path | None) -> str:
    """The sha256 that keys a file named in bench.toml: an external card's own (known without the file, which is
    verified against it when read), else the file's."""
    path = _from_config(value, config_root)
    return read_card(path).sha256 if is_card(value) else sha256_file(path)


def _from_config(value: str, config_root: Path | None) -> Path:
    """A path named in bench.toml: absolute, or relative to bench.toml's folder."""
    path = Path(os.path.expanduser(value))
    return path if path.is_absolute() or config_root is None else Path(config_root) / path
