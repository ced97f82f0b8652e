"""Configuration checking: the JSON schema (with defaults) plus the cross-references it cannot
express.

``check_config(config, schema_path)`` is called by ``workflow/rules/common.smk`` before any job is
scheduled. Every problem is reported at once, each line naming the key, the value and what is
allowed; then ``snakemake.utils.validate`` fills the schema's defaults into ``config``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import yaml


class ConfigError(ValueError):
    """The configuration is invalid; the message lists every problem."""


def _key(path: Iterable) -> str:
    parts = [str(p) for p in path]
    return ".".join(parts) if parts else "<top level>"


def _allowed_keys(schema: dict) -> list[str]:
    return sorted(schema.get("properties", {}))


def _describe(err) -> str:
    """One line for one jsonschema error: key, value, what is allowed."""
    v, val, key = err.validator, err.validator_value, _key(err.absolute_path)
    inst = err.instance
    if v == "additionalProperties":
        extra = sorted(set(inst) - set(err.schema.get("properties", {})))
        allowed = _allowed_keys(err.schema)
        where = f"under `{key}`" if err.absolute_path else "at the top level"
        return (
            f"unknown key(s) {', '.join(repr(k) for k in extra)} {where}; "
            f"allowed: {', '.join(allowed) if allowed else '(none)'}"
        )
    if "propertyNames" in err.relative_schema_path:
        return f"config key `{key}` has an entry named {inst!r}; allowed names: {_allowed(v, val)}"
    if v == "required":
        missing = [k for k in val if k not in inst]
        return f"config key `{key}` is missing required key(s) {', '.join(missing)}"
    if v in ("oneOf", "anyOf") and err.context:
        alts = []
        for sub in err.context:
            if sub.validator == "type" and sub.validator_value == "null":
                alts.append("null")
            else:
                alts.append(_allowed(sub.validator, sub.validator_value))
        return f"config key `{key}` has value {inst!r}; allowed: {' or '.join(dict.fromkeys(alts))}"
    return f"config key `{key}` has value {inst!r}; allowed: {_allowed(v, val)}"


def _allowed(v: str, val) -> str:
    return {
        "enum": lambda: (
            "one of " + ", ".join(map(repr, val)) if isinstance(val, list) else repr(val)
        ),
        "const": lambda: repr(val),
        "exclusiveMinimum": lambda: f"a number > {val}",
        "minimum": lambda: f"a number >= {val}",
        "maximum": lambda: f"a number <= {val}",
        "exclusiveMaximum": lambda: f"a number < {val}",
        "type": lambda: f"a value of type {val}",
        "pattern": lambda: f"a string matching {val!r}",
        "minItems": lambda: f"a list of at least {val} item(s)",
        "minProperties": lambda: f"at least {val} entr{'y' if val == 1 else 'ies'}",
        "uniqueItems": lambda: "a list without repeated items",
    }.get(v, lambda: f"see the schema ({v}: {val!r})")()


def schema_errors(config: dict, schema: dict) -> list[str]:
    from jsonschema import Draft202012Validator

    validator = Draft202012Validator(schema)
    errs = sorted(
        validator.iter_errors(config), key=lambda e: (list(map(str, e.absolute_path)), e.validator)
    )
    return list(dict.fromkeys(_describe(e) for e in errs))


def task_errors(config: dict) -> list[str]:
    """Task names and task-specific settings checked against the task table
    (:data:`repexp.tasks.TASKS`): the schema accepts any name, so a new task needs no schema
    edit."""
    from repexp.tasks import TASKS

    known = ", ".join(sorted(TASKS))
    options = sorted({o for spec in TASKS.values() for o in spec.data_options})
    errors = []

    def check_names(names, key):
        unknown = [t for t in names if t not in TASKS]
        if unknown:
            errors.append(
                f"unknown key(s) {', '.join(repr(t) for t in unknown)} under `{key}`; allowed: "
                f"{known} (the tasks of repexp.tasks.TASKS)"
            )

    tasks = config.get("tasks")
    if isinstance(tasks, dict):
        check_names(tasks, "tasks")
        for t, entry in tasks.items():
            if t not in TASKS or not isinstance(entry, dict):
                continue
            spec = TASKS[t]
            source = entry.get("source", "offline")
            if source not in spec.sources:
                errors.append(
                    f"config key `tasks.{t}.source` has value {source!r}; allowed for {t}: "
                    f"{', '.join(repr(s) for s in spec.sources)}"
                )
            for option in options:  # each is a property of the schema's $defs/task
                if entry.get(option) is not None and option not in spec.data_options:
                    owners = [n for n, s in TASKS.items() if option in s.data_options]
                    errors.append(
                        f"config key `tasks.{t}.{option}` is set, but {option} is an option of "
                        f"{', '.join(owners)} only; remove it"
                    )
    overrides = (config.get("rl") or {}).get("task_overrides")
    if isinstance(overrides, dict):
        check_names(overrides, "rl.task_overrides")
    lengths = (config.get("cluster") or {}).get("response_tokens")
    if isinstance(lengths, dict):
        check_names(lengths, "cluster.response_tokens")
    return errors


def reference_errors(config: dict) -> list[str]:
    """Names used in one section must be defined in another (the schema cannot say this)."""
    from repexp.tasks import SPLITS

    models, tasks = set(config.get("models", {})), set(config.get("tasks", {}))
    errors = []

    def need(kind, names, key, value):
        if value is not None and value not in names:
            errors.append(
                f"config key `{key}` names {kind} {value!r}, which is not defined under "
                f"`{kind}s`; defined: {', '.join(sorted(names)) or '(none)'}"
            )

    inf = config.get("inference", {})
    for i, m in enumerate(inf.get("models", [])):
        need("model", models, f"inference.models.{i}", m)
    for i, t in enumerate(inf.get("tasks", [])):
        need("task", tasks, f"inference.tasks.{i}", t)
    samplers = set(inf.get("samplers", {}))
    for i, g in enumerate(inf.get("grid", [])):
        need("model", models, f"inference.grid.{i}.model", g.get("model"))
        need("task", tasks, f"inference.grid.{i}.task", g.get("task"))
        if g.get("sampler") not in samplers:
            errors.append(
                f"config key `inference.grid.{i}.sampler` names sampler {g.get('sampler')!r}, "
                f"not defined under `inference.samplers`; defined: {', '.join(sorted(samplers))}"
            )
    if inf.get("models") and inf.get("tasks") and "vanilla" not in samplers:
        errors.append(
            "config key `inference.samplers` must define `vanilla` "
            "(the pools of every model x task)"
        )
    for i, m in enumerate((inf.get("features") or {}).get("ablation_models") or []):
        if m not in inf.get("models", []):
            errors.append(
                f"config key `inference.features.ablation_models.{i}` names model {m!r}, which is "
                f"not in `inference.models` (only those have vanilla pools)"
            )
    # an entry whose pool this config does not run is inert (an overlay that drops the model
    # keeps the default's entry harmlessly); a repexp_layer<L> method that no pool can run is
    # refused by stage_errors
    for i, entry in enumerate((inf.get("features") or {}).get("layers") or []):
        key = f"inference.features.layers.{i}"
        m, t = entry.get("model"), entry.get("task")
        need("model", models, f"{key}.model", m)
        need("task", tasks, f"{key}.task", t)
        if m not in inf.get("models", []) or t not in inf.get("tasks", []):
            continue
        from repexp.dag import resolve_layer

        try:
            resolve_layer(config, m, entry.get("layer"))
        except ValueError as e:
            errors.append(f"config key `{key}.layer`: {e}")
    need(
        "model",
        models,
        "inference.metrics.reference_model",
        inf.get("metrics", {}).get("reference_model"),
    )
    tl = config.get("token_level", {})
    need("model", models, "token_level.model", tl.get("model"))
    need("model", models, "token_level.reference_model", tl.get("reference_model"))
    need("task", tasks, "token_level.task", tl.get("task"))
    if tl.get("model") and not (tl.get("task") and tl.get("reference_model")):
        errors.append(
            "config key `token_level.model` is set, so `token_level.task` and "
            "`token_level.reference_model` must be set too (the reference model's vanilla pools "
            "rank the questions); set token_level.model: null to skip the token-level stage"
        )
    if tl.get("task") in tasks and "test" not in config["tasks"][tl["task"]].get(
        "splits", ["test"]
    ):
        errors.append(
            f"config key `tasks.{tl['task']}.splits` must include 'test': the token-level stage "
            f"(token_level.task) runs on the test split"
        )
    rl = config.get("rl", {})
    need("model", models, "rl.model", rl.get("model"))
    for i, t in enumerate(rl.get("tasks", [])):
        need("task", tasks, f"rl.tasks.{i}", t)
    for t, o in rl.get("task_overrides", {}).items():
        need("task", tasks, f"rl.task_overrides.{t}.dev_task", o.get("dev_task"))
    from repexp.rl.methods import METHODS  # the table of RL methods, not the schema, names them

    for i, m in enumerate(rl.get("methods", [])):
        if m not in METHODS:
            errors.append(
                f"config key `rl.methods.{i}` has value {m!r}; allowed: one of "
                f"{', '.join(map(repr, METHODS))} (repexp.rl.methods.METHODS)"
            )
    for t, spec in config.get("tasks", {}).items():
        for s in spec.get("splits", []):
            if t in SPLITS and s not in SPLITS[t]:
                errors.append(
                    f"config key `tasks.{t}.splits` has value {s!r}; allowed for {t}: "
                    f"{', '.join(SPLITS[t])}"
                )
    return errors


def check_config(config: dict, schema_path: str | os.PathLike) -> dict:
    """Validate ``config`` in place (filling defaults) or raise :class:`ConfigError` listing every
    problem."""
    with open(schema_path) as f:
        schema = yaml.safe_load(f)
    errors = schema_errors(config, schema) + task_errors(config)
    if not errors:
        from snakemake.utils import validate

        validate(config, os.fspath(os.path.abspath(schema_path)))  # fills the schema's defaults
        errors = reference_errors(config)
    if errors:
        raise ConfigError(
            "invalid configuration (nothing was run):\n  - "
            + "\n  - ".join(errors)
            + "\nSee config/README.md for every key and its allowed values."
        )
    return config


# ------------------------------------------------------------------------------------------------
# settings checked before any job: what a stage's own dataclass rejects
# ------------------------------------------------------------------------------------------------
def stage_errors(config: dict, root: str | os.PathLike | None = None) -> list[str]:
    """Problems that only a stage's own settings check finds, reported with the schema's.

    The inference stage: every name in ``inference.selection.methods`` is a selector of
    :data:`repexp.selectors.SELECTORS` that needs only the select stage's inputs and can run on
    at least one of the stage's tasks (``answer_dedup`` needs a task with a final answer) and,
    for ``repexp_layer<L>``, on at least one pool whose cache holds layer L
    (``inference.features.layers``).
    The RL stage (when ``rl.model`` and ``rl.tasks`` are set): every task's training settings
    (``rl`` with its ``task_overrides``) must pass ``RLSettings.from_dict`` (whole groups per
    process, batch multiples, ...), and with ``rl.gpus_per_run`` > 1 the ``rl.accelerate_config``
    file must exist (relative to ``root``, default the working directory, where ``accelerate
    launch`` reads it)."""
    from pathlib import Path

    errors = []
    methods = ((config.get("inference") or {}).get("selection") or {}).get("methods")
    if methods is not None:
        from repexp.dag import inference_pools, layer_pools
        from repexp.inference import check_methods

        tasks = sorted({t for _m, t, _s in inference_pools(config)}) or None
        try:
            check_methods(methods, tasks=tasks, layers=layer_pools(config))
        except ValueError as e:
            errors.append(f"config key `inference.selection.methods`: {e}")
    rl = config.get("rl") or {}
    if not (rl.get("model") and rl.get("tasks")):
        return errors
    from repexp.rl.settings import train_settings
    from repexp.rl.trainer import RLSettings

    for task in rl["tasks"]:
        try:
            RLSettings.from_dict(train_settings(rl, task))
        except (TypeError, ValueError) as e:
            errors.append(f"config key `rl` (task {task}, with its task_overrides): {e}")
    accelerate_config = rl.get("accelerate_config")
    if rl.get("gpus_per_run", 1) > 1 and accelerate_config is not None:
        where = Path(root) if root is not None else Path.cwd()
        if not (where / accelerate_config).is_file():
            errors.append(
                f"config key `rl.accelerate_config` has value {accelerate_config!r}, which does "
                f"not exist (relative to {where}); give the path of an accelerate config "
                "file, e.g. profiles/accelerate/fsdp.yaml, or null"
            )
    return errors


def check_workflow_config(
    config: dict, schema_path: str | os.PathLike, root: str | os.PathLike | None = None
) -> dict:
    """:func:`check_config`, then :func:`stage_errors` (paths relative to ``root``, default the
    working directory): what ``workflow/rules/common.smk`` runs before any job is scheduled.
    Raises :class:`ConfigError` listing every problem."""
    check_config(config, schema_path)
    errors = stage_errors(config, root)
    if errors:
        raise ConfigError(
            "invalid configuration (nothing was run):\n  - "
            + "\n  - ".join(errors)
            + "\nSee config/README.md for every key and its allowed values."
        )
    return config


# ------------------------------------------------------------------------------------------------
# the config Snakemake sees, outside Snakemake (python -m repexp.jobs, repexp.memory, the tests)
# ------------------------------------------------------------------------------------------------
def merge(base: dict, overlay: dict) -> dict:
    """Snakemake's ``--configfile`` merge: mappings key by key, everything else replaced."""
    for k, v in overlay.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            merge(base[k], v)
        else:
            base[k] = v
    return base


def load_config(
    configfiles: Iterable[str | os.PathLike] = (),
    *,
    base: str | os.PathLike = "config/config.yaml",
    schema: str | os.PathLike = "workflow/schemas/config.schema.yaml",
) -> dict:
    """The config Snakemake sees for ``--configfile <files>``, checked, defaults filled (paths in
    it relative to the workflow's root, the schema's ``../..``)."""
    from pathlib import Path

    config = yaml.safe_load(Path(base).read_text())
    for f in configfiles:
        merge(config, yaml.safe_load(Path(f).read_text()) or {})
    return check_workflow_config(config, schema, root=Path(schema).resolve().parents[2])
