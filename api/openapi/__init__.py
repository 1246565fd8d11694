"""The OpenAPI 3.1 document the server serves at `/openapi.json`, and the field reference of
docs/serving.md: `document.py` generates the components from the wire models (api/*/bodies.py,
api/errors.py) and adds the running limits and the refused fields' reasons; `paths.py` lays
out each route's operation around them. It may import the dialects' bodies, api/errors.py,
api/settings.py and api/wire.py; nothing that serves requests.
"""

from api.openapi.document import fields_reference, openapi_document

__all__ = ["fields_reference", "openapi_document"]
