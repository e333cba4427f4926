"""Data contracts (Open Data Contract Standard v3 YAML) enforced with Great Expectations 1.x.

A contract in `data_contracts/` describes one source: its record properties (`schema[0].properties`) with
`logicalType`, `required`, `logicalTypeOptions` (minLength, maxLength, pattern, minimum, maximum) and ODCS
`quality` rules of type `library` (`validValues`), and, in `customProperties`, `maxInvalidShare`: the largest
share of a batch that may fail record-level rules before the whole batch is refused.

Every rule becomes one Great Expectations expectation, evaluated on the whole batch in an ephemeral context with
the COMPLETE result format, so each failing row is known and quarantined with the rule it broke
(`contract.<property>.<rule>`). Great Expectations is imported only inside `validate` (it costs seconds).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from labelops.config import INCLUDE_DIR

PY_TYPES = {"string": "str", "integer": "int", "number": "float", "boolean": "bool", "array": "list",
            "object": "dict"}


class ContractError(ValueError):
    """The contract file itself is unusable."""


class BatchRejected(RuntimeError):
    """The batch breaks a batch-level rule of the contract: nothing may be staged."""


@dataclass(frozen=True)
class Rule:
    prop: str
    rule: str  # required | logicalType | minLength | maxLength | pattern | minimum | maximum | validValues
    value: Any

    @property
    def reason(self) -> str:
        return f"contract.{self.prop}.{self.rule}"


@dataclass(frozen=True)
class Contract:
    id: str
    version: str
    path: Path
    properties: tuple[str, ...]
    rules: tuple[Rule, ...]
    max_invalid_share: float

    def describe(self) -> dict:
        return {"id": self.id, "version": self.version, "file": self.path.name}


def contracts_dir() -> Path:
    return Path(os.environ.get("LABELOPS_CONTRACTS_DIR", INCLUDE_DIR.parent / "data_contracts"))


def load_contract(name: str, directory: Path | None = None) -> Contract:
    path = (directory or contracts_dir()) / name
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ContractError(f"{path}: cannot read the contract: {exc}") from None
    if not isinstance(doc, dict) or doc.get("kind") != "DataContract" or not str(doc.get("apiVersion", "")).startswith("v3"):
        raise ContractError(f"{path}: not an ODCS v3 DataContract (kind/apiVersion)")
    try:
        schema = doc["schema"][0]
        props = schema["properties"]
    except (KeyError, IndexError, TypeError):
        raise ContractError(f"{path}: needs schema[0].properties") from None
    rules: list[Rule] = []
    names = []
    for prop in props:
        name = prop.get("name")
        if not name:
            raise ContractError(f"{path}: a property has no name")
        names.append(name)
        if prop.get("required"):
            rules.append(Rule(name, "required", True))
        if prop.get("logicalType"):
            if prop["logicalType"] not in PY_TYPES:
                raise ContractError(f"{path}: property {name}: unknown logicalType {prop['logicalType']!r}")
            rules.append(Rule(name, "logicalType", prop["logicalType"]))
        opts = prop.get("logicalTypeOptions") or {}
        for key in ("minLength", "maxLength", "pattern", "minimum", "maximum"):
            if key in opts:
                rules.append(Rule(name, key, opts[key]))
        for q in prop.get("quality") or []:
            if q.get("rule") == "validValues":
                rules.append(Rule(name, "validValues", tuple(q["validValues"])))
            else:
                raise ContractError(f"{path}: property {name}: unsupported quality rule {q.get('rule')!r}")
    custom = {c.get("property"): c.get("value") for c in doc.get("customProperties") or []}
    share = float(custom.get("maxInvalidShare", 0.2))
    return Contract(id=str(doc.get("id")), version=str(doc.get("version")), path=path, properties=tuple(names),
                    rules=tuple(rules), max_invalid_share=share)


def _expectation(rule: Rule):
    import great_expectations.expectations as gxe

    col = rule.prop
    if rule.rule == "required":
        return gxe.ExpectColumnValuesToNotBeNull(column=col)
    if rule.rule == "logicalType":
        return gxe.ExpectColumnValuesToBeOfType(column=col, type_=PY_TYPES[rule.value])
    if rule.rule == "minLength":
        return gxe.ExpectColumnValueLengthsToBeBetween(column=col, min_value=rule.value)
    if rule.rule == "maxLength":
        return gxe.ExpectColumnValueLengthsToBeBetween(column=col, max_value=rule.value)
    if rule.rule == "pattern":
        return gxe.ExpectColumnValuesToMatchRegex(column=col, regex=rule.value)
    if rule.rule == "minimum":
        return gxe.ExpectColumnValuesToBeBetween(column=col, min_value=rule.value)
    if rule.rule == "maximum":
        return gxe.ExpectColumnValuesToBeBetween(column=col, max_value=rule.value)
    if rule.rule == "validValues":
        return gxe.ExpectColumnValuesToBeInSet(column=col, value_set=list(rule.value))
    raise ContractError(f"unsupported rule {rule}")


def validate(contract: Contract, rows: list[dict]) -> list[str | None]:
    """For each row, the reason of the first contract rule it breaks, or None when it satisfies them all.

    Rules are checked in contract order; a value of the wrong type is reported as such and not also judged by
    the rules that assume the type (a number is not "too short").
    """
    if not rows:
        return []
    import logging

    import great_expectations as gx
    import pandas as pd

    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    frame = pd.DataFrame({p: pd.Series([r.get(p) for r in rows], dtype=object) for p in contract.properties})
    context = gx.get_context(mode="ephemeral")
    try:
        from great_expectations.data_context.types.base import ProgressBarsConfig

        context.variables.progress_bars = ProgressBarsConfig(globally=False)
    except Exception:  # progress bars are cosmetic
        pass
    batch = (context.data_sources.add_pandas("labelops").add_dataframe_asset("batch")
             .add_batch_definition_whole_dataframe("all").get_batch(batch_parameters={"dataframe": frame}))
    # A suite registered with the context gives every expectation an id, by which results are matched to rules.
    suite = context.suites.add(gx.ExpectationSuite(name=f"{contract.id}@{contract.version}"))
    rule_of_id = {}
    for rule in contract.rules:
        rule_of_id[suite.add_expectation(_expectation(rule)).id] = rule
    result = batch.validate(suite, result_format={"result_format": "COMPLETE"})
    failing: dict[Rule, set[int]] = {}
    for res in result.results:
        cfg = res.expectation_config
        if res.exception_info and res.exception_info.get("raised_exception"):
            raise ContractError(f"{contract.path.name}: expectation {cfg.type} on {cfg.kwargs.get('column')} "
                                f"raised: {res.exception_info.get('exception_message')}")
        failing[rule_of_id[cfg.id]] = set(res.result.get("unexpected_index_list") or [])
    if len(failing) != len(contract.rules):
        raise ContractError(f"{contract.path.name}: {len(contract.rules)} rules but {len(failing)} results")
    reasons: list[str | None] = [None] * len(rows)
    wrong_type: set[tuple[int, str]] = set()
    for rule in contract.rules:  # contract order decides which reason a row gets
        bad = failing.get(rule, set())
        if rule.rule == "logicalType":
            wrong_type |= {(i, rule.prop) for i in bad}
        for i in bad:
            if reasons[i] is None and (rule.rule in ("required", "logicalType") or (i, rule.prop) not in wrong_type):
                reasons[i] = rule.reason
    return reasons


def check_batch(contract: Contract, n_rows: int, n_invalid: int) -> None:
    """Raise BatchRejected when the invalid share of the batch is above the contract's limit."""
    if n_rows and n_invalid / n_rows > contract.max_invalid_share:
        raise BatchRejected(
            f"contract {contract.id} v{contract.version}: {n_invalid} of {n_rows} records "
            f"({n_invalid / n_rows:.1%}) break record-level rules, above the limit of "
            f"{contract.max_invalid_share:.0%} (customProperties.maxInvalidShare); nothing was staged"
        )
