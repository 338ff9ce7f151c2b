"""``mobilenets serve``: one model over HTTP, for every task through one runner (:mod:`mobilenets.deploy`).

Install with ``pip install 'mobilenets[serve]'`` (FastAPI, uvicorn, python-multipart, prometheus-client).

Floors, each importing only those below it: :mod:`.limits` (limits, the error type) -> :mod:`.decode` (upload
bytes -> image, with the caps) -> :mod:`.model` (a runner + its task: image -> input, outputs -> JSON) ->
:mod:`.batching` (the one inference worker) -> :mod:`.metrics` -> :mod:`.body` (capped request bodies),
:mod:`.pipeline` (the routes' shared state and the one inference pipeline) -> :mod:`.oip` (Open Inference
Protocol v2: wire format and routes) -> :mod:`.app` (the FastAPI app and the page) -> :mod:`.server` (uvicorn,
graceful SIGTERM). :mod:`.client` talks to any OIP v2 server (this one, Triton, KServe) with the model's own
pre- and postprocessing.
"""
