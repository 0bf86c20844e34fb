"""A local graph explorer (``circuits serve``): JSON API, HTTP server, offline export.

- ``api``: pure functions from (graph, parameters) to JSON-able dicts (summary, pruned
  view, node detail, subgraph save) and the parameter checks that turn bad input into
  ``ExploreError`` (an HTTP status plus a one-line message).
- ``server``: a standard-library ``ThreadingHTTPServer`` serving one run directory and
  the package's own ``static/`` front end.
- ``export``: one self-contained offline HTML page of one pruned graph.
"""

from circuits.explore.api import ExploreError
from circuits.explore.server import ServeConfig, make_server

__all__ = ["ExploreError", "ServeConfig", "make_server"]
