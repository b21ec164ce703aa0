"""Model names: which model a request asks for, which one the upstream serves, and back.

Owns `--model-map` (also RECHAT_MODEL_MAP) and `--override-model`, in the form of the model
rerouter (seed: openai-model-rerouter-README.md, "Model Mapping Examples"):

    {"gpt-3.5-turbo": "llama3-8b",                  exact name -> name
     "/gpt-(.*)turbo/": "llama3-\\\\1-instruct"}      /regex/ -> template with back-references

Rules, in order: an override model wins over everything; then an exact key; then the
`/regex/` keys in the order written, the first whose pattern is *found* in the name
(`re.search`, so anchor with ^ and $ for a whole-name match) turns the whole name into its
template expanded with that match (`\\1`, `\\g<name>`; a group that did not take part gives
""). A `/regex/i` key ignores case. A name nothing matches is served as asked. The map is
applied once, never to its own result.

The client sees the name it asked for in answers (`restore_response_model`, `ModelRestore`).
Pure and stdlib only; imports nothing from rechat but `errors`.
"""

from __future__ import annotations

import json
import re
from typing import Any, Mapping

from rechat.errors import ConfigError

__all__ = ["ModelMap", "restore_response_model", "ModelRestore"]


_PATTERN_KEY = re.compile(r"/(.+)/(i?)", re.DOTALL)


class ModelMap:
    """A model-name mapping: exact names, then `/regex/` patterns, under an optional override.

    Build with `from_dict` / `from_json` (validated: ConfigError on a bad regex, a bad
    back-reference or a non-string value), or directly from `exact`, `patterns` (a sequence of
    ``(regex, template)`` or ``(compiled, template)``) and `override`. Immutable.
    """

    __slots__ = ("exact", "patterns", "override")

    def __init__(self, exact: Mapping[str, str] | None = None,
                 patterns: tuple[tuple[re.Pattern[str] | str, str], ...] | list = (),
                 override: str | None = None) -> None:
        self.exact: dict[str, str] = dict(exact or {})
        compiled = []
        for pattern, template in patterns:
            rx = pattern if isinstance(pattern, re.Pattern) else _compile(pattern, 0, pattern)
            _check_template(rx, template, f"/{rx.pattern}/")
            compiled.append((rx, template))
        self.patterns: tuple[tuple[re.Pattern[str], str], ...] = tuple(compiled)
        if override is not None and (not isinstance(override, str) or not override):
            raise ConfigError(f"--override-model must be a non-empty model name, got {override!r}")
        self.override = override

    @classmethod
    def from_dict(cls, mapping: Mapping[str, Any], override: str | None = None,
                  source: str = "--model-map") -> "ModelMap":
        """Build from the rerouter's JSON object form (keys in order; `/re/` keys are patterns).

        Raises ConfigError naming `source` and the bad key for a non-string value, an empty
        target, an invalid regex or a template referring to a group the regex lacks.
        """
        if not isinstance(mapping, Mapping):
            raise ConfigError(f"{source} must be a JSON object of model names, got "
                              f"{type(mapping).__name__}")
        exact: dict[str, str] = {}
        patterns: list[tuple[re.Pattern[str], str]] = []
        for key, value in mapping.items():
            if not isinstance(value, str) or not value:
                raise ConfigError(f"{source}: the target of {key!r} must be a non-empty model "
                                  f"name, got {value!r}")
            m = _PATTERN_KEY.fullmatch(key) if isinstance(key, str) else None
            if m is not None:
                flags = re.IGNORECASE if m.group(2) else 0
                rx = _compile(m.group(1), flags, f"{source}: {key!r}")
                _check_template(rx, value, f"{source}: {key!r}")
                patterns.append((rx, value))
            else:
                exact[key] = value
        return cls(exact, patterns, override)

    @classmethod
    def from_json(cls, text: str, override: str | None = None,
                  source: str = "--model-map") -> "ModelMap":
        """Build from JSON text (the `--model-map` / RECHAT_MODEL_MAP value); "" is an empty map.

        Raises ConfigError with the JSON error's position for text that is not JSON.
        """
        if not text or not text.strip():
            return cls(override=override)
        try:
            mapping = json.loads(text)
        except ValueError as e:
            raise ConfigError(f"{source} is not valid JSON ({e}); expected e.g. "
                              '{"gpt-3.5-turbo": "llama3-8b", "/gpt-(.*)/": "llama3-\\\\1"}') from None
        return cls.from_dict(mapping, override, source)

    def with_override(self, override: str | None) -> "ModelMap":
        """Return a copy whose override is `override` (None: no override)."""
        return ModelMap(self.exact, self.patterns, override)

    def __bool__(self) -> bool:
        return bool(self.exact or self.patterns or self.override)

    def __repr__(self) -> str:
        return (f"ModelMap(exact={self.exact!r}, patterns={[(p.pattern, t) for p, t in self.patterns]!r}, "
                f"override={self.override!r})")

    def resolve(self, name: str) -> str:
        """Return the model to serve for the requested `name` (rules in the module docstring)."""
        if self.override is not None:
            return self.override
        hit = self.exact.get(name)
        if hit is not None:
            return hit
        for rx, template in self.patterns:
            m = rx.search(name)
            if m is not None:
                return m.expand(template)
        return name

    def rewrite_request(self, body: Any) -> tuple[Any, str | None, str | None]:
        """Map a request body's ``model``; return ``(body to send, asked, served)``.

        `asked` and `served` are None when the body is not a JSON object with a string
        ``model``; the body is then returned as is. The returned body is `body` itself when the
        name does not change, else a shallow copy; `body` is never mutated.
        """
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            return body, None, None
        asked = body["model"]
        served = self.resolve(asked)
        return (body if served == asked else {**body, "model": served}), asked, served

    def aliases(self) -> list[str]:
        """Return the exact names this map answers to, to list in /v1/models (patterns cannot be)."""
        return list(self.exact)


def _compile(body: str, flags: int, where: str) -> re.Pattern[str]:
    try:
        return re.compile(body, flags)
    except re.error as e:
        raise ConfigError(f"{where} is not a valid regular expression: {e}") from None


def _check_template(rx: re.Pattern[str], template: str, where: str) -> None:
    """Expand `template` against a stand-in match with rx's groups, so bad references fail now."""
    names = {index: name for name, index in rx.groupindex.items()}
    stand_in = re.compile("".join(f"(?P<{names[i]}>)" if i in names else "()"
                                  for i in range(1, rx.groups + 1)))
    try:
        stand_in.match("").expand(template)  # type: ignore[union-attr]
    except (re.error, IndexError) as e:
        raise ConfigError(f"{where}: the target {template!r} refers to a group the pattern does "
                          f"not have ({e})") from None


def restore_response_model(obj: Any, asked: str) -> Any:
    """Return an answer object (JSON body, SSE chunk, NDJSON line) whose ``model`` reads `asked`.

    Only a top-level string ``model`` is changed; anything else (and an object already naming
    `asked`) is returned as the same object. Never mutates `obj`.
    """
    if isinstance(obj, dict) and isinstance(obj.get("model"), str) and obj["model"] != asked:
        return {**obj, "model": asked}
    return obj


class ModelRestore:
    """Object transform (protocol in `rechat.think`) that shows the client the model it asked for.

    Use it when the request's model was rewritten (asked != served); otherwise the upstream's
    own name (e.g. a dated OpenAI snapshot) reaches the client untouched.
    """

    def __init__(self, asked: str) -> None:
        self.asked = asked

    def feed(self, obj: dict) -> list[dict]:
        """Return ``[obj with model = asked]``."""
        return [restore_response_model(obj, self.asked)]

    def end(self) -> list[dict]:
        """Return [] (nothing is held)."""
        return []
