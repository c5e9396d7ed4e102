"""The tokens of a `generate` prompt, as the model's source would give them.

Plain text is framed as the run frames texts (drope_jax/data/framing.py). A chat turn
(`generate --chat [--system=...]`) is rendered with the source's chat template as
transformers' `apply_chat_template(messages, add_generation_prompt=True)` renders it (a
sandboxed jinja2 environment with its options and helpers, the special tokens of
tokenizer_config.json as variables) and encoded without added special tokens, as
transformers does: the template writes a BOS itself where the source wants one.
"""

import datetime
import json

import numpy as np
from etils import epath
from jinja2 import exceptions
from jinja2 import ext
from jinja2 import sandbox

from drope_jax import errors
from drope_jax.data import framing

CHAT_TEMPLATE_FILE = "chat_template.jinja"
# The special tokens transformers gives a template (its `special_tokens_map`).
_SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token",
                   "cls_token", "mask_token")


class ChatError(errors.BadInput, ValueError):
  """--chat on a run without a chat template, or a template refusing the messages."""


def prompt_tokens(run, text: str, *, chat: bool = False,
                  system: str | None = None) -> np.ndarray:
  """The int32 tokens the model reads for `text`: framed, or as a chat's user turn."""
  tokenizer = run.tokenizer()
  if not chat:
    return framing.prompt(run.framing, tokenizer, tokenizer.encode_array(text))
  messages = [{"role": "user", "content": text}]
  if system is not None:
    messages.insert(0, {"role": "system", "content": system})
  return tokenizer.encode_array(render_chat(run.name, run.config.data.tokenizer, messages))


def render_chat(name: str, tokenizer_spec: str, messages: list[dict]) -> str:
  """The conversation as the chat template of run `name`'s tokenizer writes it, ready
  for the assistant's answer."""
  directory = _source_directory(tokenizer_spec)
  template = _chat_template(directory) if directory else None
  if not template:
    raise ChatError(
        f"--chat: {name} has no chat template (its tokenizer {tokenizer_spec!r} has no "
        f"{CHAT_TEMPLATE_FILE} and no chat_template in tokenizer_config.json beside it); "
        "native runs and base models have none, an imported instruct model brings its "
        "own: drop --chat to continue plain text")
  try:
    return _environment().from_string(template).render(
        messages=messages, tools=None, documents=None, add_generation_prompt=True,
        **_special_tokens(directory))
  except exceptions.TemplateError as e:
    raise ChatError(f"--chat: {name}'s chat template refused the messages: {e}") from e


def _source_directory(tokenizer_spec: str) -> epath.Path | None:
  """Where a Hugging Face tokenizer's companion files lie; None for other kinds."""
  kind, _, path = tokenizer_spec.partition(":")
  return epath.Path(path).parent if kind == "hf" else None


def _chat_template(directory: epath.Path) -> str | None:
  """chat_template.jinja, else tokenizer_config.json's chat_template (transformers'
  order); of named templates, the default one."""
  if (directory / CHAT_TEMPLATE_FILE).exists():
    return (directory / CHAT_TEMPLATE_FILE).read_text()
  template = _json(directory / "tokenizer_config.json").get("chat_template")
  if isinstance(template, list):  # [{"name": ..., "template": ...}, ...]
    template = {t["name"]: t["template"] for t in template}.get("default")
  return template


def _special_tokens(directory: epath.Path) -> dict[str, str]:
  named = {**_json(directory / "special_tokens_map.json"),
           **_json(directory / "tokenizer_config.json")}
  tokens = {}
  for key in _SPECIAL_TOKENS:
    token = named.get(key)
    if isinstance(token, dict):  # {"content": "</s>", ...}
      token = token.get("content")
    if isinstance(token, str):
      tokens[key] = token
  return tokens


def _json(path: epath.Path) -> dict:
  return json.loads(path.read_text()) if path.exists() else {}


class _Generation(ext.Extension):
  """`{% generation %}...{% endgeneration %}`: transformers' marks around assistant
  text (for its training masks); the text renders as is."""
  tags = {"generation"}

  def parse(self, parser):
    next(parser.stream)
    return parser.parse_statements(("name:endgeneration",), drop_needle=True)


def _raise_exception(message):
  raise exceptions.TemplateError(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
  # transformers' filter: jinja's own escapes HTML characters.
  return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                    sort_keys=sort_keys)


def _environment() -> sandbox.ImmutableSandboxedEnvironment:
  """transformers' template environment: templates are untrusted code, so sandboxed."""
  env = sandbox.ImmutableSandboxedEnvironment(
      trim_blocks=True, lstrip_blocks=True, extensions=[_Generation, ext.loopcontrols])
  env.filters["tojson"] = _tojson
  env.globals["raise_exception"] = _raise_exception
  env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
  return env
