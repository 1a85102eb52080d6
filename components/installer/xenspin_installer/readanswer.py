"""Reading an answerfile from its file: size and encoding checked, then YAML or XenServer XML.

YAML is read through boundedyaml.py, so an alias bomb or deep nesting is one line
before anything is built from it; XML goes to xmlanswer.py. Both end in the one model
of answerfile.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import boundedyaml
from .answerfile import LIMITS, MAX_BYTES, Answerfile, AnswerfileError, Node, answer_format, build
from .xmlanswer import parse_xml


def load(path: Path) -> tuple[Answerfile, list[str]]:
    """Read an answerfile, YAML or XenServer XML; returns it and warnings (one line each)."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise AnswerfileError(str(path), 0, "", f"cannot read: {e.strerror}") from None
    if len(data) > MAX_BYTES:
        raise AnswerfileError(str(path), 0, "", f"is over {MAX_BYTES} bytes (expected a small answerfile)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise AnswerfileError(str(path), 0, "", "is not UTF-8 text") from None
    if answer_format(path) == "xml":
        return parse_xml(text, str(path))
    return parse_yaml(text, str(path)), []


def parse_yaml(text: str, file: str) -> Answerfile:
    import yaml

    try:
        root = boundedyaml.compose(text, LIMITS)
        if root is None:
            raise AnswerfileError(file, 0, "", "is empty (expected a mapping with root:)")
        node = _to_node(root, yaml.SafeLoader(""), file)
    except boundedyaml.LimitError as e:
        raise AnswerfileError(file, e.line, "", e.message) from None
    except yaml.MarkedYAMLError as e:
        line = e.problem_mark.line + 1 if e.problem_mark else 0
        raise AnswerfileError(file, line, "", f"not valid YAML: {e.problem}") from None
    except yaml.YAMLError as e:
        raise AnswerfileError(file, 0, "", f"not valid YAML: {e}") from None
    return build(Answerfile, node, "")


def _to_node(n: Any, loader: Any, file: str) -> Node:
    """Composed YAML as Nodes (recursive: boundedyaml has checked the depth and the expanded size)."""
    import yaml

    line = n.start_mark.line + 1
    if isinstance(n, yaml.MappingNode):
        out: dict[str, Node] = {}
        for k, v in n.value:
            key = loader.construct_object(k) if isinstance(k, yaml.ScalarNode) else None
            if not isinstance(key, str):
                raise AnswerfileError(file, k.start_mark.line + 1, "", "keys must be strings")
            if key in out:
                raise AnswerfileError(file, k.start_mark.line + 1, key, "given twice")
            out[key] = _to_node(v, loader, file)
        return Node(out, line, file)
    if isinstance(n, yaml.SequenceNode):
        return Node([_to_node(v, loader, file) for v in n.value], line, file)
    return Node(loader.construct_object(n), line, file, n.value)
