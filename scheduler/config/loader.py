"""Read ``config/``: campaigns, checks and reports, every problem collected, none fatal alone."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from scheduler.config.campaigns import CampaignTypes, ListFile
from scheduler.config.checks import ChecksFile
from scheduler.config.yaml_lines import PathKey, YamlDocument, load_yaml
from scheduler.errors import ConfigError, Problem
from scheduler.gcpause import gc_paused
from scheduler.logs import config_secret_values, redact_also


@dataclass(frozen=True)
class Source:
    """Where a campaign is defined. The line is looked up when asked for: finding it means
    composing the file again, which a configuration without problems never needs."""

    file: str
    known_line: int | None = None
    doc: YamlDocument | None = field(default=None, compare=False, repr=False)
    path: PathKey = field(default=(), compare=False, repr=False)

    @property
    def line(self) -> int | None:
        return self.doc.line_of(self.path) if self.doc is not None else self.known_line


@dataclass
class LoadedConfig:
    """A validated configuration: what should happen (ARCHITECTURE.md, invariant 1)."""

    config_dir: Path
    types: CampaignTypes | None = field(default=None, repr=False, compare=False)
    campaigns: dict[str, Any] = field(default_factory=dict)  # name -> Campaign model
    checks: ChecksFile = field(default_factory=ChecksFile)
    sources: dict[str, Source] = field(default_factory=dict)
    files: dict[Path, float] = field(default_factory=dict)  # path -> mtime, for reload
    # Where each campaign lives: its YAML document and the key path of its mapping.
    documents: dict[str, tuple[YamlDocument, PathKey]] = field(
        default_factory=dict, repr=False, compare=False)

    def campaign(self, name: str) -> Any:
        return self.campaigns[name]

    def campaign_problem(self, name: str, path: PathKey, message: str) -> Problem:
        """A problem about field ``path`` of campaign ``name``, with file and line.

        Job kinds' ``validate`` use it, e.g. ``config.campaign_problem(c.name, ("template",),
        "template not found")``.
        """
        located = self.documents.get(name)
        if located is None:
            src = self.sources.get(name, Source(str(self.config_dir), None))
            return Problem(src.file, src.line, ".".join(map(str, path)), message)
        doc, base = located
        problem = doc.problem((*base, *path), message)
        # The field is named relative to the campaign, as the person wrote it.
        return Problem(problem.file, problem.line, ".".join(map(str, path)), message)

    def path(self, relative: str) -> Path:
        """A path a config file mentions, relative to the config directory."""
        candidate = Path(relative)
        return candidate if candidate.is_absolute() else self.config_dir / candidate


def _friendly(error: Any, kinds: tuple[str, ...]) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        return "unknown key (check the spelling; see `martech schema`)"
    if kind == "missing":
        return "required field is missing"
    if kind == "union_tag_invalid":
        return f"kind must be one of {', '.join(kinds)}"
    if kind == "union_tag_not_found":
        return f"kind is missing; expected one of {', '.join(kinds)}"
    message = str(error["msg"])
    return message.removeprefix("Value error, ")


def validation_problems(doc: YamlDocument, exc: ValidationError, base: PathKey,
                        kinds: tuple[str, ...] = ()) -> list[Problem]:
    problems = []
    for error in exc.errors():
        loc = list(error["loc"])
        # Discriminated unions put the tag first; drop it, and nested union member names.
        loc = [p for p in loc if not (isinstance(p, str) and p in (*kinds, "Selector"))]
        loc = [p for p in loc if not (isinstance(p, str) and p.startswith("literal["))]
        if error["type"] in ("union_tag_invalid", "union_tag_not_found"):
            loc.append("kind")
        path: PathKey = (*base, *loc)
        problems.append(doc.problem(path, _friendly(error, kinds)))
    return problems


def _campaign_entries(doc: YamlDocument) -> list[tuple[PathKey, Any]] | Problem:
    data = doc.data
    if isinstance(data, dict) and "campaigns" in data and "kind" not in data:
        data = data["campaigns"]
        base: PathKey = ("campaigns",)
        if not isinstance(data, list):
            return doc.problem(base, "expected a list of campaigns")
        return [((*base, i), item) for i, item in enumerate(data)]
    if isinstance(data, list):
        return [((i,), item) for i, item in enumerate(data)]
    if isinstance(data, dict):
        return [((), data)]
    return doc.problem((), "expected a campaign (a mapping with name and kind) or a list of them")


def load_config(config_dir: Path, types: CampaignTypes) -> LoadedConfig:
    """Load and validate everything under ``config_dir``; campaigns may be of ``types``.

    :raises ConfigError: listing every problem found, each as ``file:line: field: message``.
    """
    # Thousands of fresh, acyclic objects (data, models): the cyclic GC would only re-walk them.
    with gc_paused():
        return _load_config(Path(config_dir), types)


def _load_config(config_dir: Path, types: CampaignTypes) -> LoadedConfig:
    problems: list[Problem] = []
    loaded = LoadedConfig(config_dir=config_dir, types=types)
    if not config_dir.is_dir():
        raise ConfigError([Problem(str(config_dir), None, "", "config directory not found")])

    campaign_files = sorted((config_dir / "campaigns").glob("*.y*ml"))
    for path in campaign_files:
        loaded.files[path] = path.stat().st_mtime
        doc, file_problems = load_yaml(path)
        problems += file_problems
        if doc is None or doc.data is None:
            continue
        entries = _campaign_entries(doc)
        if isinstance(entries, Problem):
            problems.append(entries)
            continue
        for base, item in entries:
            _add_campaign(loaded, doc, base, item, problems)

    for list_file in types.list_files:
        _load_list_file(loaded, list_file, problems)

    checks_path = config_dir / "checks.yaml"
    checks_doc: YamlDocument | None = None
    if checks_path.exists():
        loaded.files[checks_path] = checks_path.stat().st_mtime
        checks_doc, file_problems = load_yaml(checks_path)
        problems += file_problems
        if checks_doc is not None:
            try:
                loaded.checks = ChecksFile.model_validate(checks_doc.data or {})
            except ValidationError as exc:
                problems += validation_problems(checks_doc, exc, ())

    problems += _cross_references(loaded, checks_doc)
    if problems:
        raise ConfigError(problems)
    # Webhook URLs and database passwords in the config join the log redaction list.
    redact_also(config_secret_values(loaded))
    return loaded


def _load_list_file(loaded: LoadedConfig, list_file: ListFile, problems: list[Problem]) -> None:
    """``reports.yaml``-style files: ``<key>: [...]``, each entry of one kind."""
    path = loaded.config_dir / list_file.filename
    if not path.exists():
        return
    loaded.files[path] = path.stat().st_mtime
    doc, file_problems = load_yaml(path)
    problems += file_problems
    if doc is None or doc.data is None:
        return
    entries = doc.data.get(list_file.key) if isinstance(doc.data, dict) else None
    if not isinstance(entries, list):
        problems.append(doc.problem((list_file.key,), f"expected a list of {list_file.key}"))
        return
    for index, item in enumerate(entries):
        if isinstance(item, dict):
            item = {"kind": list_file.kind, **item}
        _add_campaign(loaded, doc, (list_file.key, index), item, problems)


def _add_campaign(
    loaded: LoadedConfig, doc: YamlDocument, base: PathKey, item: Any, problems: list[Problem]
) -> None:
    assert loaded.types is not None
    try:
        campaign = loaded.types.adapter.validate_python(item)
    except ValidationError as exc:
        problems.extend(validation_problems(doc, exc, base, loaded.types.kinds))
        return
    if campaign.name in loaded.campaigns:
        first = loaded.sources[campaign.name]
        problems.append(Problem(doc.file, doc.line_of((*base, "name")), "name",
                                f"duplicate campaign name {campaign.name!r} "
                                f"(first defined at {first.file}:{first.line})"))
        return
    loaded.campaigns[campaign.name] = campaign
    loaded.sources[campaign.name] = Source(doc.file, doc=doc, path=(*base, "name"))
    loaded.documents[campaign.name] = (doc, base)


def _cross_references(loaded: LoadedConfig, checks_doc: YamlDocument | None) -> list[Problem]:
    """Names mentioned in one place must exist in another."""
    problems: list[Problem] = []
    check_names = set(loaded.checks.checks)
    for name, campaign in loaded.campaigns.items():
        for required in campaign.requires:
            if required not in check_names:
                problems.append(loaded.campaign_problem(
                    name, ("requires",),
                    f"campaign {name!r} requires unknown check {required!r}"
                    f" (known: {', '.join(sorted(check_names)) or 'none'})"))
    if checks_doc is not None:
        for index, guard in enumerate(loaded.checks.guards):
            if guard.check not in check_names:
                problems.append(checks_doc.problem(("guards", index, "check"),
                                                   f"unknown check {guard.check!r}"))
            selector = guard.selector()
            for target in selector.names:
                if target not in loaded.campaigns:
                    problems.append(checks_doc.problem(("guards", index, "pauses", "names"),
                                                       f"unknown campaign {target!r}"))
        for index, window in enumerate(loaded.checks.maintenance):
            for target in window.selector().names:
                if target not in loaded.campaigns:
                    problems.append(checks_doc.problem(("maintenance", index, "pauses", "names"),
                                                       f"unknown campaign {target!r}"))
    return problems


def config_fingerprint(config_dir: Path) -> dict[Path, float]:
    """mtimes of every config file, to notice edits without an inotify dependency."""
    files: dict[Path, float] = {}
    for pattern in ("campaigns/*.y*ml", "*.yaml", "audiences/*", "content/*"):
        for path in config_dir.glob(pattern):
            try:
                files[path] = path.stat().st_mtime
            except OSError:
                continue
    return files
