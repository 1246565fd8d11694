"""Structured output on the real server and default engine, through the libraries people use.

The official openai and ollama clients, instructor and LangChain's ChatOpenAI are pointed at
a real `appliance serve`, unchanged, as a user would: parsed objects, tool calls (streamed
and not), JSON mode, JSON schemas and GBNF grammars.
"""

from __future__ import annotations

import json

import instructor
import jsonschema
import ollama
import openai
import pydantic
import pytest
from instructor.core import InstructorRetryException

from tests.integration.server import Server

pytestmark = pytest.mark.integration

DECODER = "smollm2-135m-instruct-int4"
WEATHER_QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]
WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
    "required": ["city"],
}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "The current weather in a city", "parameters": WEATHER}}]


class Cat(pydantic.BaseModel):
    name: str
    age: int


class User(pydantic.BaseModel):
    name: str
    age: int


def test_parse_returns_the_pydantic_object(oai: openai.OpenAI) -> None:
    completion = oai.chat.completions.parse(
        model=DECODER, messages=[{"role": "user", "content": "Describe a cat as JSON with its name and age."}], response_format=Cat, temperature=0
    )
    assert isinstance(completion.choices[0].message.parsed, Cat)
    assert completion.choices[0].finish_reason == "stop"


def test_json_mode_answers_a_json_object(oai: openai.OpenAI) -> None:
    answer = oai.chat.completions.create(model=DECODER, messages=[{"role": "user", "content": "List three colours."}], response_format={"type": "json_object"}, temperature=0)
    assert isinstance(json.loads(answer.choices[0].message.content), dict)


def test_required_tool_call_streamed_and_not(oai: openai.OpenAI) -> None:
    whole = oai.chat.completions.create(model=DECODER, messages=WEATHER_QUESTION, tools=TOOLS, tool_choice="required", temperature=0)
    choice = whole.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.function.name == "get_weather" and call.id.startswith("call_")
    jsonschema.validate(json.loads(call.function.arguments), WEATHER)
    streamed: dict[int, dict] = {}
    finish = None
    for chunk in oai.chat.completions.create(model=DECODER, messages=WEATHER_QUESTION, tools=TOOLS, tool_choice="required", temperature=0, stream=True):
        for delta in chunk.choices[0].delta.tool_calls or ():
            entry = streamed.setdefault(delta.index, {"name": None, "arguments": "", "id": None})
            if delta.id:
                assert entry["id"] is None, "id only in a call's first delta"
                entry["id"] = delta.id
            if delta.function.name:
                assert entry["name"] is None, "name only in a call's first delta"
                entry["name"] = delta.function.name
            entry["arguments"] += delta.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls"
    assert [(e["name"], e["arguments"]) for e in streamed.values()] == [(c.function.name, c.function.arguments) for c in choice.message.tool_calls]


def test_a_tool_result_in_the_history(oai: openai.OpenAI) -> None:
    first = oai.chat.completions.create(model=DECODER, messages=WEATHER_QUESTION, tools=TOOLS, tool_choice="required", temperature=0)
    call = first.choices[0].message.tool_calls[0]
    history = [*WEATHER_QUESTION, first.choices[0].message.model_dump(exclude_none=True), {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 22 degrees."}]
    answer = oai.chat.completions.create(model=DECODER, messages=history, tools=TOOLS, temperature=0, max_tokens=80)
    message = answer.choices[0].message
    assert message.content or message.tool_calls


def test_auto_lets_the_model_answer_in_words(oai: openai.OpenAI) -> None:
    # A tool that has nothing to do with the question: the model answers it in words.
    translate = [{"type": "function", "function": {"name": "translate", "description": "Translate text into French", "parameters": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}}}]
    answer = oai.chat.completions.create(model=DECODER, messages=[{"role": "user", "content": "Hi! How are you?"}], tools=translate, temperature=0)
    assert answer.choices[0].message.content and not answer.choices[0].message.tool_calls
    assert answer.choices[0].finish_reason == "stop"


def test_gbnf_yes_or_no_chat_and_completions(oai: openai.OpenAI) -> None:
    grammar = {"grammar": 'root ::= "yes" | "no"'}
    for seed in range(3):
        chat = oai.chat.completions.create(model=DECODER, messages=[{"role": "user", "content": "Is the sky blue?"}], seed=seed, extra_body=grammar)
        assert chat.choices[0].message.content in ("yes", "no")
        completion = oai.completions.create(model=DECODER, prompt="Is the sky blue? Answer:", seed=seed, extra_body=grammar)
        assert completion.choices[0].text in ("yes", "no")


def test_bad_schema_is_a_400(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as error:
        oai.chat.completions.create(
            model=DECODER, messages=WEATHER_QUESTION, response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "strin"}}}
        )
    assert error.value.body["param"] == "response_format.json_schema.schema"


def test_ollama_format_schema_and_tools(olm: ollama.Client) -> None:
    answer = olm.chat(model=DECODER, messages=[{"role": "user", "content": "Describe a cat as JSON with its name and age."}], format=Cat.model_json_schema(), options={"temperature": 0})
    Cat.model_validate_json(answer.message.content)
    generated = olm.generate(model=DECODER, prompt="List three colours as JSON.", format="json", options={"temperature": 0})
    assert isinstance(json.loads(generated.response), dict)

    def get_weather(city: str) -> str:
        """The current weather in a city.

        Args:
          city: the city
        """
        return "sunny"

    answer = olm.chat(model=DECODER, messages=WEATHER_QUESTION, tools=[get_weather], options={"temperature": 0})
    assert answer.message.tool_calls and answer.message.tool_calls[0].function.name == "get_weather"
    assert isinstance(answer.message.tool_calls[0].function.arguments["city"], str)
    streamed = [call for chunk in olm.chat(model=DECODER, messages=WEATHER_QUESTION, tools=[get_weather], options={"temperature": 0}, stream=True) for call in chunk.message.tool_calls or ()]
    assert [(c.function.name, c.function.arguments) for c in streamed] == [(c.function.name, c.function.arguments) for c in answer.message.tool_calls]


def test_instructor_tools_and_json_schema_modes(oai: openai.OpenAI) -> None:
    for mode in (instructor.Mode.TOOLS, instructor.Mode.JSON_SCHEMA):
        client = instructor.from_openai(oai, mode=mode)
        user = client.chat.completions.create(model=DECODER, response_model=User, messages=[{"role": "user", "content": "John is 30 years old."}], temperature=0, max_retries=0)
        assert (user.name, user.age) == ("John", 30), (mode, user)


def test_instructor_json_mode_reaches_the_server_as_json_mode(oai: openai.OpenAI) -> None:
    """instructor's JSON mode puts the schema in the prompt only; the server enforces JSON.

    SmolLM2-135M answers with a copy of the schema instead of an instance (its weakness, not
    the wire's): what is checked here is that the answer is the JSON object the mode asks for
    and that instructor reads it (its validation error names the schema's fields).
    """
    client = instructor.from_openai(oai, mode=instructor.Mode.JSON)
    try:
        user, completion = client.chat.completions.create_with_completion(
            model=DECODER, response_model=User, messages=[{"role": "user", "content": "John is 30 years old."}], temperature=0, max_retries=0
        )
    except InstructorRetryException as error:
        completion = error.last_completion
        assert "name" in str(error) and "age" in str(error)
    else:
        assert isinstance(user, User)
    assert isinstance(json.loads(completion.choices[0].message.content), dict)


def test_langchain_structured_output_and_bind_tools(server: Server) -> None:
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(model=DECODER, base_url=f"{server.url}/v1", api_key="unused", temperature=0, max_retries=0)
    for method in ("json_schema", "function_calling"):
        user = llm.with_structured_output(User, method=method).invoke("John is 30 years old.")
        assert isinstance(user, User), method

    @tool
    def get_weather(city: str) -> str:
        """The current weather in a city."""
        return "sunny"

    message = llm.bind_tools([get_weather]).invoke("What is the weather in Paris?")
    assert message.tool_calls and message.tool_calls[0]["name"] == "get_weather" and "city" in message.tool_calls[0]["args"]
