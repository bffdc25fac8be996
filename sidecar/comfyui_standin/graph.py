"""Pure graph logic: prompt validation (ComfyUI's error shapes), execution order and cache signatures.

A prompt is `{node_id: {"class_type": str, "inputs": {name: literal | [source_node_id, output_index]}}}`.
Nothing here does I/O: the caller passes the class specs (with combo lists already filled in) and, for
signatures, the per-node "is changed" values it computed (e.g. a file hash for LoadImage).
"""

from __future__ import annotations

import hashlib
import json
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

Prompt = Mapping[str, Any]
JSON = dict[str, Any]
# A custom validator returns None when the value is fine, or the error text ComfyUI would show.
CustomValidator = Callable[[Any], str | None]


@dataclass(frozen=True)
class ClassSpec:
    """What validation and ordering need to know about a node class."""

    name: str
    required: Mapping[str, list[Any]]
    optional: Mapping[str, list[Any]] = field(default_factory=dict)
    output_types: tuple[str, ...] = ()
    output_node: bool = False
    custom_validators: Mapping[str, CustomValidator] = field(default_factory=dict)


@dataclass
class ValidationResult:
    ok: bool
    error: JSON | None
    outputs: list[str]
    node_errors: JSON


def is_link(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], int)
        and not isinstance(value[1], bool)
    )


def _error(kind: str, message: str, details: str = "", extra: JSON | None = None) -> JSON:
    return {"type": kind, "message": message, "details": details, "extra_info": extra or {}}


def _input_config(spec_entry: list[Any]) -> list[Any]:
    type_input = spec_entry[0]
    opts = spec_entry[1] if len(spec_entry) > 1 and isinstance(spec_entry[1], dict) else {}
    return [type_input, opts]


def _convert(type_input: str, value: Any) -> Any:
    if type_input == "INT":
        return int(value)
    if type_input == "FLOAT":
        return float(value)
    if type_input == "STRING":
        return str(value)
    if type_input == "BOOLEAN":
        return bool(value)
    return value


def _types_match(received: str, expected: Any) -> bool:
    if not isinstance(expected, str):  # a combo list accepts a COMBO/STRING link
        return received in ("COMBO", "STRING", "*")
    if received == "*" or expected == "*":
        return True
    return received == expected or expected in received.split(",")


class _Validator:
    def __init__(self, prompt: Prompt, specs: Mapping[str, ClassSpec]) -> None:
        self.prompt = prompt
        self.specs = specs
        self.validated: dict[str, tuple[bool, list[JSON]]] = {}
        self.visiting: set[str] = set()

    def validate(self, node_id: str) -> bool:
        if node_id in self.validated:
            return self.validated[node_id][0]
        if node_id in self.visiting:
            raise ValueError(f"Dependency cycle detected at node '{node_id}'")
        self.visiting.add(node_id)
        try:
            return self._validate(node_id)
        finally:
            self.visiting.discard(node_id)

    def _validate(self, node_id: str) -> bool:
        node = self.prompt[node_id]
        spec = self.specs[node["class_type"]]
        inputs = node.get("inputs") or {}
        errors: list[JSON] = []
        valid = True
        entries = [(n, e, True) for n, e in spec.required.items()]
        entries += [(n, e, False) for n, e in spec.optional.items()]
        for name, entry, required in entries:
            if name not in inputs:
                if required:
                    errors.append(
                        _error(
                            "required_input_missing", "Required input is missing", name, {"input_name": name}
                        )
                    )
                continue
            value = inputs[name]
            type_input = entry[0]
            config = _input_config(entry)
            if isinstance(value, list):
                if not is_link(value):
                    errors.append(
                        _error(
                            "bad_linked_input",
                            "Bad linked input, must be a length-2 list of [node_id, slot_index]",
                            name,
                            {"input_name": name, "input_config": config, "received_value": value},
                        )
                    )
                    continue
                source_id, slot = value
                source = self.prompt[source_id]  # KeyError is reported against the output, as ComfyUI does
                source_types = self.specs[source["class_type"]].output_types
                received = source_types[slot] if 0 <= slot < len(source_types) else "*"
                if not _types_match(received, type_input):
                    details = f"{name}, received_type({received}) mismatch input_type({type_input})"
                    errors.append(
                        _error(
                            "return_type_mismatch",
                            "Return type mismatch between linked nodes",
                            details,
                            {
                                "input_name": name,
                                "input_config": config,
                                "received_type": received,
                                "linked_node": value,
                            },
                        )
                    )
                    continue
                if not self.validate(source_id):
                    valid = False
                continue
            if isinstance(type_input, str) and type_input in ("INT", "FLOAT", "STRING", "BOOLEAN"):
                try:
                    converted = _convert(type_input, value)
                except (TypeError, ValueError) as ex:
                    errors.append(
                        _error(
                            "invalid_input_type",
                            f"Failed to convert an input value to a {type_input} value",
                            f"{name}, {value}, {ex}",
                            {
                                "input_name": name,
                                "input_config": config,
                                "received_value": value,
                                "exception_message": str(ex),
                            },
                        )
                    )
                    continue
                opts = config[1]
                if type_input in ("INT", "FLOAT"):
                    if "min" in opts and converted < opts["min"]:
                        errors.append(
                            _error(
                                "value_smaller_than_min",
                                f"Value {converted} smaller than min of {opts['min']}",
                                name,
                                {"input_name": name, "input_config": config, "received_value": converted},
                            )
                        )
                        continue
                    if "max" in opts and converted > opts["max"]:
                        errors.append(
                            _error(
                                "value_bigger_than_max",
                                f"Value {converted} bigger than max of {opts['max']}",
                                name,
                                {"input_name": name, "input_config": config, "received_value": converted},
                            )
                        )
                        continue
            if name in spec.custom_validators:
                problem = spec.custom_validators[name](value)
                if problem is not None:
                    errors.append(
                        _error(
                            "custom_validation_failed",
                            "Custom validation failed for node",
                            f"{name} - {problem}",
                            {"input_name": name},
                        )
                    )
                continue
            if isinstance(type_input, list) and value not in type_input:
                listing = f"(list of length {len(type_input)})" if len(type_input) > 20 else repr(type_input)
                errors.append(
                    _error(
                        "value_not_in_list",
                        "Value not in list",
                        f"{name}: '{value}' not in {listing}",
                        {"input_name": name, "input_config": config, "received_value": value},
                    )
                )
        ok = valid and not errors
        self.validated[node_id] = (ok, errors)
        return ok


def validate_prompt(
    prompt: Any, specs: Mapping[str, ClassSpec], targets: Sequence[str] | None = None
) -> ValidationResult:
    """Validate like ComfyUI 0.3.64's validate_prompt: same error types, messages and node_errors shape."""
    if not isinstance(prompt, Mapping):
        return ValidationResult(
            False, _error("invalid_prompt", "Prompt must be a JSON object mapping node ids to nodes"), [], {}
        )
    for node_id, node in prompt.items():
        if not isinstance(node, Mapping) or "class_type" not in node:
            return ValidationResult(
                False,
                _error(
                    "invalid_prompt",
                    "Cannot execute because a node is missing the class_type property.",
                    f"Node ID '#{node_id}'",
                ),
                [],
                {},
            )
        class_type = node["class_type"]
        if not isinstance(class_type, str) or class_type not in specs:
            return ValidationResult(
                False,
                _error(
                    "invalid_prompt",
                    f"Cannot execute because node {class_type} does not exist.",
                    f"Node ID '#{node_id}'",
                ),
                [],
                {},
            )
        if "inputs" in node and not isinstance(node["inputs"], Mapping):
            return ValidationResult(
                False,
                _error("invalid_prompt", "Node inputs must be a JSON object.", f"Node ID '#{node_id}'"),
                [],
                {},
            )
    outputs = [nid for nid, node in prompt.items() if specs[node["class_type"]].output_node]
    if targets is not None:
        outputs = [nid for nid in outputs if nid in set(targets)]
    if not outputs:
        return ValidationResult(False, _error("prompt_no_outputs", "Prompt has no outputs"), [], {})

    validator = _Validator(prompt, specs)
    good: list[str] = []
    failed: list[tuple[str, list[JSON]]] = []
    node_errors: JSON = {}
    for output_id in outputs:
        try:
            ok = validator.validate(output_id)
            reasons = validator.validated[output_id][1]
        except Exception as ex:  # a broken link: ComfyUI reports it against the output being validated
            ok = False
            reasons = [
                _error(
                    "exception_during_validation",
                    "Exception when validating node",
                    str(ex),
                    {
                        "exception_type": type(ex).__name__,
                        "traceback": traceback.format_tb(ex.__traceback__),
                    },
                )
            ]
            validator.validated[output_id] = (False, reasons)
        if ok:
            good.append(output_id)
            continue
        failed.append((output_id, reasons))
        for node_id, (node_ok, node_reasons) in validator.validated.items():
            if node_ok or not node_reasons:
                continue
            entry = node_errors.setdefault(
                node_id,
                {
                    "errors": node_reasons,
                    "dependent_outputs": [],
                    "class_type": prompt[node_id]["class_type"],
                },
            )
            entry["dependent_outputs"].append(output_id)
    if not good:
        details = "\n".join(f"{r['message']}: {r['details']}" for _, rs in failed for r in rs)
        return ValidationResult(
            False,
            _error("prompt_outputs_failed_validation", "Prompt outputs failed validation", details),
            [],
            node_errors,
        )
    return ValidationResult(True, None, good, node_errors)


def execution_order(
    prompt: Prompt, outputs: Sequence[str], cached: set[str], output_nodes: set[str]
) -> list[str]:
    """The order in which ComfyUI runs the nodes: cached nodes are skipped unless they are an output root;
    among ready nodes an output comes first, then a node feeding an output (1 or 2 links away), else the
    first added (ComfyUI's ExecutionList with its "ux friendly" pick)."""
    pending: dict[str, None] = {}
    blocking: dict[str, set[str]] = {}
    block_count: dict[str, int] = {}
    for root in outputs:
        stack = [root]
        links: list[tuple[str, str]] = []
        while stack:
            node_id = stack.pop()
            if node_id in pending:
                continue
            pending[node_id] = None
            blocking.setdefault(node_id, set())
            block_count.setdefault(node_id, 0)
            for value in (prompt[node_id].get("inputs") or {}).values():
                if is_link(value) and value[0] not in cached:
                    stack.append(value[0])
                    links.append((value[0], node_id))
        for source, target in links:
            if target not in blocking[source]:
                blocking[source].add(target)
                block_count[target] += 1
    order: list[str] = []
    for _ in range(len(pending)):
        ready = [n for n in pending if block_count[n] == 0]
        if not ready:
            raise ValueError("the prompt has a dependency cycle")
        node_id = _pick(ready, blocking, output_nodes)
        order.append(node_id)
        del pending[node_id]
        for target in blocking[node_id]:
            block_count[target] -= 1
    return order


def _pick(ready: list[str], blocking: Mapping[str, set[str]], output_nodes: set[str]) -> str:
    for node_id in ready:
        if node_id in output_nodes:
            return node_id
    for node_id in ready:
        if any(b in output_nodes for b in blocking[node_id]):
            return node_id
    for node_id in ready:
        if any(bb in output_nodes for b in blocking[node_id] for bb in blocking.get(b, ())):
            return node_id
    return ready[0]


def signatures(prompt: Prompt, changed: Mapping[str, Any]) -> dict[str, str]:
    """A cache key per node: its class, literal inputs, "is changed" value and its ancestors' keys."""
    result: dict[str, str] = {}

    def sign(node_id: str, depth: int) -> str:
        if node_id in result:
            return result[node_id]
        if depth > len(prompt):
            raise ValueError("the prompt has a dependency cycle")
        node = prompt[node_id]
        inputs = node.get("inputs") or {}
        parts: list[Any] = [node["class_type"], changed.get(node_id)]
        for name in sorted(inputs):
            value = inputs[name]
            if is_link(value) and value[0] in prompt:
                parts.append([name, "link", sign(value[0], depth + 1), value[1]])
            else:
                parts.append([name, value])
        digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()
        result[node_id] = digest
        return digest

    for node_id in prompt:
        sign(node_id, 0)
    return result
