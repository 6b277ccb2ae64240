"""Render an Ollama Modelfile TEMPLATE (Go text/template syntax) in Python, so the export's parity check can
compare the prompt Ollama builds with the one the run trained on, byte for byte.

No maintained Python package renders Go templates, so this covers the subset chat templates use: text,
`{{- ... -}}` trimming, fields (`.Role`, `$.System`, `$var.Content`), `if`/`else if`/`else`, `range`
(with `$i, $m :=`), `with`, comments, and the functions `eq ne lt le gt ge and or not len index slice`.
Anything else raises TemplateError, which the check reports as "not checked", never as a pass.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from typing import Any


class TemplateError(ValueError):
    """A template construct this renderer doesn't handle."""


_ACTION = re.compile(r"\{\{(-\s+)?(.*?)(\s+-)?\}\}", re.DOTALL)


@dataclass
class _Node:
    kind: str  # text | out | if | range | with
    arg: str = ""
    body: list[_Node] = field(default_factory=list)
    orelse: list[_Node] = field(default_factory=list)


def _lex(src: str) -> list[tuple[str, str]]:
    """[(kind, value)]: ("text", literal) and ("action", the text between the braces)."""
    out: list[tuple[str, str]] = []
    pos = 0
    trim_next = False
    for m in _ACTION.finditer(src):
        text = src[pos:m.start()]
        if trim_next:
            text = text.lstrip(" \t\r\n")
        if m.group(1):
            text = text.rstrip(" \t\r\n")
        if text:
            out.append(("text", text))
        action = m.group(2).strip()
        if not action.startswith("/*"):
            out.append(("action", action))
        trim_next = bool(m.group(3))
        pos = m.end()
    text = src[pos:]
    if trim_next:
        text = text.lstrip(" \t\r\n")
    if text:
        out.append(("text", text))
    return out


def _parse(tokens: list[tuple[str, str]], i: int = 0, closers: tuple[str, ...] = ()) -> tuple[list[_Node], int, str]:
    """Nodes up to one of `closers` ("end", "else..."); returns (nodes, next index, the closer met)."""
    nodes: list[_Node] = []
    while i < len(tokens):
        kind, value = tokens[i]
        i += 1
        if kind == "text":
            nodes.append(_Node("text", value))
            continue
        word = value.split(None, 1)[0] if value else ""
        if word in ("end", "else"):
            if not closers:
                raise TemplateError(f"unexpected {{{{ {value} }}}}")
            return nodes, i, value
        if word in ("if", "range", "with"):
            node, i = _block(tokens, i, word, value[len(word):].strip())
            nodes.append(node)
        elif word in ("define", "template", "block", "break", "continue"):
            raise TemplateError(f"{{{{ {word} }}}} is not supported")
        else:
            nodes.append(_Node("out", value))
    if closers:
        raise TemplateError("a block is never closed with {{ end }}")
    return nodes, i, ""


def _block(tokens: list[tuple[str, str]], i: int, word: str, arg: str) -> tuple[_Node, int]:
    """An if/range/with block from just after its opening action to just after its {{ end }}."""
    node = _Node(word, arg)
    node.body, i, closer = _parse(tokens, i, ("end", "else"))
    if word == "if" and closer.startswith("else if "):  # one {{ end }} closes the whole chain
        inner, i = _block(tokens, i, "if", closer[len("else if "):].strip())
        node.orelse = [inner]
        return node, i
    if closer == "else":
        node.orelse, i, closer = _parse(tokens, i, ("end",))
    if closer != "end":
        raise TemplateError(f"{{{{ {word} }}}} closed by {{{{ {closer} }}}}")
    return node, i


def _truthy(v: Any) -> bool:
    return not (v is None or v is False or v == 0 or (hasattr(v, "__len__") and len(v) == 0))


def _split_args(expr: str) -> list[str]:
    """Words of a command; a parenthesised sub-command stays one word."""
    out, depth, cur = [], 0, ""
    lex = shlex.shlex(expr, posix=False, punctuation_chars="()")
    lex.whitespace_split = True
    # shlex returns a run of parentheses ("))") as one token: one at a time here
    for tok in (c for t in lex for c in ([*t] if set(t) <= {"(", ")"} else [t])):
        if tok == "(":
            depth += 1
            cur += tok if depth > 1 else ""
            continue
        if tok == ")":
            depth -= 1
            if depth == 0:
                out.append(f"({cur.strip()})")
                cur = ""
            else:
                cur += tok
            continue
        if depth:
            cur += f" {tok}" if cur and cur[-1] != "(" else tok
        else:
            out.append(tok)
    if depth:
        raise TemplateError(f"unbalanced parentheses in {expr!r}")
    return out


_FUNCS: dict[str, Any] = {
    "eq": lambda a, *b: any(a == x for x in b),
    "ne": lambda a, b: a != b,
    "lt": lambda a, b: a < b, "le": lambda a, b: a <= b, "gt": lambda a, b: a > b, "ge": lambda a, b: a >= b,
    "not": lambda a: not _truthy(a),
    "len": lambda a: len(a),
    "index": lambda a, *keys: _index(a, keys),
    "slice": lambda a, *ix: a[slice(*ix)] if len(ix) == 2 else a[ix[0]:] if ix else a,  # `len (slice $.Messages $i)`
}


def _index(a: Any, keys: tuple[Any, ...]) -> Any:
    for k in keys:
        a = a[k]
    return a


class _Scope:
    def __init__(self, root: Any) -> None:
        self.root, self.vars = root, [{"$": root}]

    def get(self, name: str) -> Any:
        for frame in reversed(self.vars):
            if name in frame:
                return frame[name]
        raise TemplateError(f"undefined variable {name}")


def _field(v: Any, name: str) -> Any:
    if isinstance(v, dict):
        return v.get(name)
    return getattr(v, name, None)


def _term(word: str, dot: Any, scope: _Scope) -> Any:
    if word.startswith("("):
        return _eval(word[1:-1], dot, scope)
    if word[0] in "\"`":
        return word[1:-1] if word[0] == "`" else bytes(word[1:-1], "utf-8").decode("unicode_escape")
    if word in ("true", "false"):
        return word == "true"
    if word == "nil":
        return None
    if re.fullmatch(r"-?\d+", word):
        return int(word)
    if word == ".":
        return dot
    if word.startswith("."):
        base, path = dot, word[1:]
    elif word.startswith("$"):
        name, _, path = word.partition(".")
        base = scope.get(name)
    else:
        raise TemplateError(f"{word!r} is not supported")
    for part in path.split(".") if path else []:
        base = _field(base, part)
    return base


def _eval(expr: str, dot: Any, scope: _Scope) -> Any:
    words = _split_args(expr)
    if "|" in words:
        raise TemplateError(f"pipelines ({expr!r}) are not supported")
    if not words:
        raise TemplateError("empty action")
    if words[0] in _FUNCS:
        return _FUNCS[words[0]](*(_term(w, dot, scope) for w in words[1:]))
    if words[0] in ("and", "or"):  # Go: the first falsy (and) / truthy (or) argument, else the last
        vals = [_term(w, dot, scope) for w in words[1:]]
        for v in vals:
            if _truthy(v) != (words[0] == "and"):
                return v
        return vals[-1]
    if len(words) != 1:
        raise TemplateError(f"{expr!r}: function {words[0]!r} is not supported")
    return _term(words[0], dot, scope)


def _bind(arg: str) -> tuple[list[str], str]:
    """`$i, $m := .Messages` -> (["$i", "$m"], ".Messages")."""
    names, sep, expr = arg.partition(":=")
    if not sep:
        return [], arg
    return [n.strip() for n in names.split(",")], expr.strip()


def _render(nodes: list[_Node], dot: Any, scope: _Scope, out: list[str]) -> None:
    for n in nodes:
        if n.kind == "text":
            out.append(n.arg)
        elif n.kind == "out":
            names, expr = _bind(n.arg)
            v = _eval(expr, dot, scope)
            if names:
                scope.vars[-1][names[0]] = v
            elif v is not None:
                out.append(str(v).lower() if isinstance(v, bool) else str(v))
        elif n.kind == "if":
            _render(n.body if _truthy(_eval(n.arg, dot, scope)) else n.orelse, dot, scope, out)
        elif n.kind == "with":
            v = _eval(n.arg, dot, scope)
            _render(n.body, v, scope, out) if _truthy(v) else _render(n.orelse, dot, scope, out)
        else:  # range
            names, expr = _bind(n.arg)
            items = _eval(expr, dot, scope) or []
            if not items:
                _render(n.orelse, dot, scope, out)
            for i, item in enumerate(items):
                frame: dict[str, Any] = {}
                if len(names) == 1:
                    frame[names[0]] = item
                elif len(names) == 2:
                    frame[names[0]], frame[names[1]] = i, item
                scope.vars.append(frame)
                _render(n.body, item, scope, out)
                scope.vars.pop()


def render(template: str, values: dict[str, Any]) -> str:
    """The text `template` renders to with `values` as dot (Ollama's .System, .Messages, .Prompt, ...)."""
    nodes, _, _ = _parse(_lex(template))
    out: list[str] = []
    _render(nodes, values, _Scope(values), out)
    return "".join(out)
