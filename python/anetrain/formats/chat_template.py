"""Chat templates: a tokenizer's Jinja template, rendered in jinja2's sandbox as HF renders it."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from anetrain.errors import TokenizerError
from anetrain.formats.hf_tokenizer import CONFIG_FILE, HF_EXTRA, HfTokenizer
from anetrain.formats.tokenizer import TextTokenizer

TEMPLATE_FILE = "chat_template.jinja"  # where transformers >= 4.43 saves it (it wins over the
# tokenizer_config.json entry)


class TemplateRefused(Exception):
    """The template refused one conversation (raise_exception, a missing field): a bad record."""


class ChatTemplate:
    """A chat template rendered as transformers' apply_chat_template renders it.

    The template is untrusted input: it runs in jinja2's ImmutableSandboxedEnvironment, and one
    that reaches for Python internals (``''.__class__``) is refused with a TokenizerError. The
    `generation` tag (assistant spans for return_assistant_tokens_mask) renders its body.
    """

    def __init__(self, source: str, where: str, specials: dict[str, object]) -> None:
        jinja2 = _import_jinja2(where)
        from jinja2.ext import loopcontrols
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                            extensions=[loopcontrols, _generation_tag(jinja2)])
        env.filters["tojson"] = _tojson
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = _strftime_now
        self.where = where  # the file the template came from, for messages
        self.specials = specials  # bos_token, eos_token, ...: the template's variables
        try:
            self.template = env.from_string(source)
        except jinja2.TemplateSyntaxError as e:
            raise TokenizerError(f"{where}: the chat template does not parse (line {e.lineno}: "
                                 f"{e.message})") from None  # fmt: skip

    def render(self, messages: list[dict], add_generation_prompt: bool) -> str:
        """The conversation as text (special tokens spelled out, BOS if the template puts it)."""
        from jinja2 import TemplateError
        from jinja2.exceptions import SecurityError

        try:
            return self.template.render(messages=messages,
                                        add_generation_prompt=add_generation_prompt,
                                        **self.specials)  # fmt: skip
        except SecurityError as e:
            raise TokenizerError(f"{self.where}: the chat template reaches for Python internals "
                                 f"({_line(e)}); refused") from None  # fmt: skip
        except (TemplateError, TypeError, ValueError, KeyError, IndexError) as e:
            raise TemplateRefused(f"the chat template refused it: {_line(e)}") from None


def chat_template(tokenizer: TextTokenizer) -> ChatTemplate | None:
    """The chat template of an HfTokenizer (chat_template.jinja beside its tokenizer.json, else
    tokenizer_config.json's chat_template: a string, or HF's list of named templates, of which
    "default"), or None (a llama2.c tokenizer, or none in its files)."""
    if not isinstance(tokenizer, HfTokenizer):
        return None
    directory = Path(tokenizer.name).parent
    raw = tokenizer.files.get(CONFIG_FILE)
    cfg = json.loads(raw) if raw is not None else {}
    specials = _specials(cfg)
    jinja_file = directory / TEMPLATE_FILE
    if jinja_file.is_file():
        try:
            return ChatTemplate(jinja_file.read_text(encoding="utf-8"), str(jinja_file), specials)
        except (OSError, UnicodeDecodeError) as e:
            raise TokenizerError(f"{jinja_file}: cannot read the chat template ({e})") from None
    where, source = str(directory / CONFIG_FILE), cfg.get("chat_template")
    if source is None:
        return None
    if isinstance(source, list):  # [{"name": "default", "template": ...}, {"name": "tool_use"}]
        named = {t.get("name"): t.get("template") for t in source if isinstance(t, dict)}
        if "default" not in named:
            raise TokenizerError(f"{where}: chat_template lists {sorted(map(str, named))} but no "
                                 "\"default\" template")  # fmt: skip
        source = named["default"]
    if not isinstance(source, str):
        raise TokenizerError(f"{where}: chat_template must be a string or a list of named "
                             f"templates, got {type(source).__name__}")  # fmt: skip
    return ChatTemplate(source, where, specials)


def _specials(cfg: dict) -> dict[str, object]:
    """tokenizer_config.json's special tokens as the template sees them (bos_token, eos_token,
    unk_token, pad_token, ...: strings; additional_special_tokens: a list of them)."""
    out: dict[str, object] = {}
    for key, value in cfg.items():
        content = value.get("content") if isinstance(value, dict) else value
        if key.endswith("_token") and isinstance(content, str):
            out[key] = content
    extra = cfg.get("additional_special_tokens")
    if isinstance(extra, list):
        out["additional_special_tokens"] = [t.get("content") if isinstance(t, dict) else t
                                            for t in extra]  # fmt: skip
    return out


def _import_jinja2(where: str):
    try:
        import jinja2
    except ImportError:
        raise TokenizerError(f"{where}: a chat template needs the jinja2 package: "
                             f"{HF_EXTRA}") from None  # fmt: skip
    return jinja2


def _generation_tag(jinja2):
    """The `{% generation %}...{% endgeneration %}` tag of transformers' templates: its body."""
    from jinja2.ext import Extension

    class Generation(Extension):
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            call = self.call_method("_body")
            return jinja2.nodes.CallBlock(call, [], [], body).set_lineno(lineno)

        def _body(self, caller) -> str:
            return caller()

    return Generation


def _tojson(x: object, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:  # fmt: skip
    """transformers' tojson: json.dumps without jinja2's HTML escaping."""
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)  # fmt: skip


def _raise_exception(message: str) -> None:
    from jinja2 import TemplateError

    raise TemplateError(message)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _line(e: Exception) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]
