"""POST /prompt validation, following ComfyUI 0.3.64's execution.validate_prompt.

Every check reads the node classes of the instance that validates (its Catalogue's
`nodes`), so a class one instance lacks is refused by that instance only.
"""

from __future__ import annotations

import traceback
from typing import Any

from .nodes import NodeDef

Nodes = dict[str, NodeDef]  # the validating instance's classes, by name
Result = tuple[bool, dict | None, list[str], dict]  # (ok, error, outputs to run, node_errors)
NO_PROMPT = {"type": "no_prompt", "message": "No prompt provided",
             "details": "No prompt provided", "extra_info": {}}
_CONVERT = {"INT": int, "FLOAT": float, "STRING": str, "BOOLEAN": bool}
COMBO_LISTED = 20  # longer choice lists are not echoed back in value_not_in_list


def _error(kind: str, message: str, details: str, extra: dict | None = None) -> dict:
    """One error object in ComfyUI's shape."""
    return {"type": kind, "message": message, "details": details,
            "extra_info": extra or {}}


def _check_classes(prompt: dict, nodes: Nodes) -> dict | None:
    """invalid_prompt for a node without class_type or of an unknown class."""
    for node_id, node in prompt.items():
        if "class_type" not in node:
            return _error("invalid_prompt",
                          "Cannot execute because a node is missing the class_type property.",
                          f"Node ID '#{node_id}'")
        if node["class_type"] not in nodes:
            return _error("invalid_prompt",
                          f"Cannot execute because node {node['class_type']} does not exist.",
                          f"Node ID '#{node_id}'")
    return None


def _check_link(prompt: dict, nodes: Nodes, name: str, config: list, value: list,
                validated: dict) -> tuple:
    """(errors, upstream_ok) for a linked input."""
    info = [config[0], config[1] if len(config) > 1 else {}]
    if len(value) != 2:
        extra = {"input_name": name, "input_config": info, "received_value": value}
        return [_error("bad_linked_input",
                       "Bad linked input, must be a length-2 list of [node_id, slot_index]",
                       name, extra)], True
    received = nodes[prompt[value[0]]["class_type"]].outputs[value[1]]
    if received != config[0] and "*" not in (received, config[0]):
        details = f"{name}, received_type({received}) mismatch input_type({config[0]})"
        return [_error("return_type_mismatch", "Return type mismatch between linked nodes",
                       details, {"input_name": name, "input_config": info,
                                 "received_type": received, "linked_node": value})], True
    return [], _validate_node(prompt, nodes, value[0], validated)[0]


def _check_combo(name: str, config: list, value: Any) -> list[dict]:
    """value_not_in_list for a COMBO (a list of choices, e.g. a loader's model files);
    a long list is summarised and left out of the error, as ComfyUI does for model folders."""
    choices = config[0]
    if value in choices:
        return []
    info: list | None = [choices, config[1] if len(config) > 1 else {}]
    listed = str(choices)
    if len(choices) > COMBO_LISTED:
        info, listed = None, f"(list of length {len(choices)})"
    return [_error("value_not_in_list", "Value not in list", f"{name}: '{value}' not in {listed}",
                   {"input_name": name, "input_config": info, "received_value": value})]


def _check_value(inputs: dict, name: str, config: list, custom: bool = False) -> list[dict]:
    """Convert a constant like ComfyUI does (in place) and check min/max or the choices;
    `custom`: the class's VALIDATE_INPUTS takes this input, so only the conversion is done."""
    if isinstance(config[0], list):
        return [] if custom else _check_combo(name, config, inputs[name])
    kind, options = config[0], (config[1] if len(config) > 1 else {})
    info, value = [kind, options], inputs[name]
    try:
        if kind in _CONVERT:
            value = inputs[name] = _CONVERT[kind](value)
    except Exception as ex:  # noqa: BLE001 - ComfyUI reports any conversion failure
        return [_error("invalid_input_type", f"Failed to convert an input value to a {kind} value",
                       f"{name}, {value}, {ex}", {"input_name": name, "input_config": info,
                                                  "received_value": value,
                                                  "exception_message": str(ex)})]
    extra = {"input_name": name, "input_config": info, "received_value": value}
    if custom:
        return []
    if "min" in options and value < options["min"]:
        return [_error("value_smaller_than_min", f"Value {value} smaller than min of "
                       f"{options['min']}", name, extra)]
    if "max" in options and value > options["max"]:
        return [_error("value_bigger_than_max", f"Value {value} bigger than max of "
                       f"{options['max']}", name, extra)]
    return []


def _check_custom(definition: NodeDef, inputs: dict) -> list[dict]:
    """VALIDATE_INPUTS with the inputs it takes that the node has (a link as None, as before
    execution); anything but True fails each of them. Its exceptions propagate (they become
    exception_during_validation of the output, as in ComfyUI)."""
    names = definition.validated_inputs()
    if not names:
        return []
    given = {n: (None if isinstance(inputs[n], list) else inputs[n]) for n in names if n in inputs}
    result = definition.validate(**given)
    if result is True:
        return []
    reason = "" if result is False else f" - {result}"
    return [_error("custom_validation_failed", "Custom validation failed for node",
                   f"{name}{reason}", {"input_name": name}) for name in given]


def _validate_node(prompt: dict, nodes: Nodes, node_id: str,
                   validated: dict) -> tuple[bool, list]:
    """validate_inputs: (ok, errors) for one node, memoised in `validated`."""
    if node_id in validated:
        return validated[node_id]
    inputs = prompt[node_id]["inputs"]
    definition = nodes[prompt[node_id]["class_type"]]
    errors: list[dict] = []
    upstream_ok = True
    custom = definition.validated_inputs()
    for name, config, required in definition.inputs():
        if name not in inputs:
            if required:
                errors.append(_error("required_input_missing", "Required input is missing",
                                     name, {"input_name": name}))
        elif isinstance(inputs[name], list):
            link_errors, ok = _check_link(prompt, nodes, name, config, inputs[name],
                                          validated)
            errors, upstream_ok = errors + link_errors, upstream_ok and ok
        else:
            errors += _check_value(inputs, name, config, name in custom)
    errors += _check_custom(definition, inputs)
    validated[node_id] = (not errors and upstream_ok, errors)
    return validated[node_id]


def _validate_output(prompt: dict, nodes: Nodes, output: str,
                     validated: dict) -> tuple[bool, list]:
    """One output's validity; an exception becomes exception_during_validation."""
    try:
        return _validate_node(prompt, nodes, output, validated)
    except Exception as ex:  # noqa: BLE001 - ComfyUI turns any exception into a reason
        reasons = [_error("exception_during_validation", "Exception when validating node",
                          str(ex), {"exception_type": type(ex).__name__,
                                    "traceback": traceback.format_tb(ex.__traceback__)})]
        validated[output] = (False, reasons)
        return validated[output]


def _collect(prompt: dict, output: str, validated: dict, node_errors: dict) -> None:
    """Attach a failed output to every failing node with reasons (ComfyUI's quirk included)."""
    for node_id, (ok, reasons) in validated.items():
        if not ok and reasons:
            entry = node_errors.setdefault(node_id, {
                "errors": reasons, "dependent_outputs": [],
                "class_type": prompt[node_id]["class_type"]})
            entry["dependent_outputs"].append(output)


def validate_prompt(prompt: Any, nodes: Nodes, partial_targets: list | None = None) -> Result:
    """Validate like ComfyUI against one instance's classes; converts constants in place as
    ComfyUI does."""
    error = _check_classes(prompt, nodes)
    if error:
        return False, error, [], {}
    outputs = [n for n, node in prompt.items() if nodes[node["class_type"]].output_node
               and (partial_targets is None or n in partial_targets)]
    if not outputs:
        return False, _error("prompt_no_outputs", "Prompt has no outputs", ""), [], {}
    validated: dict = {}
    good, node_errors = [], {}
    for output in outputs:
        if _validate_output(prompt, nodes, output, validated)[0]:
            good.append(output)
        else:
            _collect(prompt, output, validated, node_errors)
    if not good:
        error = _error("prompt_outputs_failed_validation", "Prompt outputs failed validation", "")
        return False, error, [], node_errors
    return True, None, good, node_errors
