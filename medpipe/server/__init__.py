"""``medpipe serve``: the HTTP API the Slicer module and hospital scripts talk to.

- ``config``  — server settings and the bearer token (env var or a 0600 file)
- ``uploads`` — size-limited, checked uploads stored under server-chosen names
- ``jobs``    — the persistent job queue, drained by worker threads through the runner
- ``results`` — result formats of a finished job (``.seg.nrrd`` made on request)
- ``app``     — the FastAPI application (imports FastAPI: needs ``medpipe[server]``)

Nothing here is imported by the rest of medpipe; ``app`` is imported only by ``medpipe serve``.
"""
