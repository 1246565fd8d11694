"""`python -m api.openapi`: the OpenAPI document as JSON; `--fields`: the field reference of docs/serving.md."""

import sys

import msgspec

from api.openapi.document import fields_reference, openapi_document

if __name__ == "__main__":
    if sys.argv[1:] == ["--fields"]:
        print(fields_reference(), end="")
    else:
        print(msgspec.json.format(msgspec.json.encode(openapi_document()), indent=2).decode())
