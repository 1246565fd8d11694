"""Chat templates render like transformers does; bad messages are clear 400s."""

from __future__ import annotations

import pytest

from runtime.chat import ChatTemplate
from runtime.errors import ChatTemplateError, EngineLoadError, RequestError

# SmolLM2's template, verbatim: a default system turn when the conversation has none.
SMOLLM2 = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# A Llama-style template using the helpers transformers provides.
STRICT = """{{ bos_token }}
{%- for message in messages %}
    {%- if message['role'] == 'tool' %}
        {{- '[TOOL ' + message['tool_call_id'] + '] ' + message['content'] | tojson + '\n' }}
    {%- elif message['role'] not in ['system', 'user', 'assistant'] %}
        {{- raise_exception('roles must be system, user, assistant or tool') }}
    {%- else %}
        {{- '[' + message['role'] | upper + '] ' + message['content'] + '\n' }}
    {%- endif %}
{%- endfor %}
{%- if tools %}{{ 'TOOLS ' + tools | tojson }}{% endif %}
{%- if add_generation_prompt %}{{ '[ASSISTANT] ' }}{% endif %}"""


def test_smollm2_template_renders_as_transformers_does():
    text = ChatTemplate.compile(SMOLLM2).render([{"role": "user", "content": "Hi"}])
    assert text == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    own_system = ChatTemplate.compile(SMOLLM2).render(
        [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Hi"}], add_generation_prompt=False
    )
    assert own_system == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"


def test_every_role_content_parts_tools_and_helpers():
    template = ChatTemplate.compile(STRICT, bos_token="<s>", eos_token="</s>")
    text = template.render(
        [
            {"role": "system", "content": "sys"},
            {"role": "user", "content": [{"type": "text", "text": "part one"}, {"type": "text", "text": "part two"}]},
            {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "café ☕"},
        ],
        tools=[{"type": "function", "function": {"name": "f"}}],
    )
    assert text.startswith("<s>[SYSTEM] sys\n[USER] part one\npart two\n[ASSISTANT] \n")
    assert '[TOOL c1] "café ☕"' in text  # tojson keeps non-ASCII, as transformers' does
    assert text.endswith('TOOLS [{"type": "function", "function": {"name": "f"}}][ASSISTANT] ')


def test_the_template_can_refuse():
    template = ChatTemplate.compile("{{ raise_exception('only one message please') if messages|length > 1 }}ok")
    with pytest.raises(ChatTemplateError, match="only one message please"):
        template.render([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])


@pytest.mark.parametrize(
    ("messages", "fragment"),
    [
        ([], "at least one message"),
        ([{"role": "robot", "content": "x"}], "role must be one of"),
        (["hello"], "must be an object"),
        ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}], "not supported"),
        ([{"role": "user", "content": 42}], "string or a list"),
    ],
)
def test_bad_messages_are_request_errors(messages, fragment):
    with pytest.raises(RequestError, match=fragment) as error:
        ChatTemplate.compile(SMOLLM2).render(messages)
    assert error.value.param == "messages" and error.value.status == 400


def test_a_template_that_does_not_compile_fails_at_load():
    with pytest.raises(EngineLoadError, match="does not compile"):
        ChatTemplate.compile("{% for m in messages %}")


def test_templates_run_sandboxed():
    template = ChatTemplate.compile("{{ messages.__class__.__mro__ }}")
    with pytest.raises(ChatTemplateError):
        template.render([{"role": "user", "content": "x"}])
